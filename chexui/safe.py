"""Outside text on a terminal: the one helper for Rich and Textual.

Run names, preset names and descriptions, file names, error messages and anything else read from a run
dir, preset, dataset or image may hold terminal escapes, invisible bidi controls or markup (`[/]` makes
Rich raise; `[link=...]` makes it print a hidden OSC 8 hyperlink). `safe` turns any such value into a
Rich `Text`: control, bidi and zero-width characters replaced (`engine.sanitize.clean`), the rest shown
as the characters it is, never parsed as markup. Rich tables and consoles, Textual's Static, Label,
DataTable cells and column labels and border titles all accept a `Text`.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from engine.sanitize import clean


def safe(value: Any, style: str = "") -> Text:
    """Any value as plain terminal text (see the module docstring); `style` is chexui's own, e.g. "bold"."""
    return Text(clean(str(value)), style=style)


def joined(*parts: Text | str, sep: str = " | ") -> Text:
    """chexui's own pieces (str, never markup either) and outside ones (`safe`) as one line."""
    return Text(sep).join(p if isinstance(p, Text) else Text(p) for p in parts)


def markup_literal(value: Any) -> str:
    """Outside text where Textual reads markup (the command palette's titles and help): cleaned like
    `safe`, and every `[` escaped, so that `[/]`, `[$accent]` or `[@click=...]` show as written."""
    return clean(str(value)).replace("[", "\\[")
