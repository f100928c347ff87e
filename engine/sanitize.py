"""Text from runs, presets, datasets and file names, made safe for a terminal. Pure Python.

Such text is data: a run name, an error message or an image file name may carry escape sequences
(an OSC 52 clipboard write, a cursor move that hides a line, a carriage return that overwrites one) or
invisible Unicode controls (a right-to-left override that shows `gnp.exe` as `exe.png`, a zero-width
space that makes two names look alike). Every C0 control character but tab and newline, DEL, every C1
control character, the bidirectional controls (U+061C, U+200E/F, U+202A-E, U+2066-9), zero-width and
invisible format characters (U+200B-D, U+2060-4, U+FEFF) and the Unicode line/paragraph separators are
replaced by U+FFFD before they reach a terminal; nothing else changes. Markup (Rich's `[bold]`,
`[link=...]`) is a separate matter: chexui's terminal helper (`chexui/safe.py`) passes cleaned text as
plain text, never as markup.
"""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
REPLACEMENT = "\ufffd"


def clean(text: str) -> str:
    return _CONTROL.sub(REPLACEMENT, text)


def clean_obj(obj: Any) -> Any:
    """`clean` applied to every string (keys included) of a JSON-like value."""
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, dict):
        return {clean_obj(k): clean_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [clean_obj(v) for v in obj]
    return obj


def for_matplotlib(text: str) -> str:
    """Outside text as a matplotlib label or title: `clean`, and `$` escaped (matplotlib reads `$...$` as
    math, and a malformed expression raises when the figure is drawn)."""
    return clean(text).replace("$", r"\$")
