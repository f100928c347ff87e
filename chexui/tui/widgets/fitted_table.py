"""A table as wide as its content: every column as wide as its widest cell, so nothing is cut, and the
width the whole table needs (`needed_width`), which it takes when the screen has room for it."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

WIDE = 120  # from this many columns on, a fitted table takes all the width it needs
REST = 40  # below that, it leaves at least this many columns to the pane beside it ...
NARROW = 30  # ... and keeps at least this many (its first columns); the key that maximizes it shows all


def cell_width(cell: str | Text) -> int:
    return cell.cell_len if isinstance(cell, Text) else Text(cell).cell_len


class FittedTable(DataTable):
    DEFAULT_CSS = "FittedTable { scrollbar-size-vertical: 1; }"

    needed_width: int = 0

    def fill(self, headers: Sequence[str | Text], rows: Sequence[Sequence[str | Text]]) -> None:
        """Replace the table's columns and rows; each column as wide as its widest cell."""
        widths = [max(cell_width(c) for c in col) for col in zip(headers, *rows)] if headers else []
        self.clear(columns=True)
        for header, width in zip(headers, widths):
            self.add_column(header, width=width)
        for row in rows:
            self.add_row(*row)
        # cells, their padding either side, this widget's border and padding, and a vertical scrollbar
        self.needed_width = sum(widths) + 2 * self.cell_padding * len(widths) + self.styles.gutter.width + 1
        self.fit(self.screen.size.width if self.is_attached else 0)

    def fit(self, screen_width: int) -> None:
        """Take the width the table needs on a wide screen; on a narrow one, leave room beside it; shown
        full-screen (maximized), the whole screen."""
        if not self.needed_width:
            return
        width: int | str = (
            "1fr"
            if self.has_class("-maximized")
            else self.needed_width
            if screen_width >= WIDE
            else min(self.needed_width, max(NARROW, screen_width - REST))
        )
        self.styles.width = width
