"""The engine's log, wrapped at the pane's width (a long line is never cut: it continues on the next
row) and wrapped again when the pane changes size, e.g. maximized to read it full-screen."""

from __future__ import annotations

from collections import deque

from textual.events import Resize
from textual.widgets import RichLog

from chexui.safe import safe

KEEP = 2000  # lines kept to wrap again (RichLog keeps rendered rows only)


class LogPane(RichLog):
    ALLOW_MAXIMIZE = True

    def __init__(self, **kw) -> None:
        super().__init__(max_lines=KEEP * 4, wrap=True, markup=False, min_width=1, **kw)
        self.raw: deque = deque(maxlen=KEEP)
        self._wrapped_at = 0

    def add_lines(self, lines: list[str]) -> None:
        """Lines of the engine's log (outside text: shown as plain text)."""
        for line in lines:
            self.raw.append(safe(line))
            self.write(self.raw[-1])

    def on_resize(self, event: Resize) -> None:
        width = self.scrollable_content_region.width
        if width and self._wrapped_at and width != self._wrapped_at:
            self.clear()
            for line in self.raw:
                self.write(line)
        self._wrapped_at = width
