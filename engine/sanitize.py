"""Text from runs, presets, datasets and file names, made safe for a terminal. Pure Python.

Such text is data: a run name, an error message or an image file name may carry escape sequences
(an OSC 52 clipboard write, a cursor move that hides a line, a carriage return that overwrites one).
Every C0 control character but tab and newline, DEL and every C1 control character is replaced by
U+FFFD before it reaches a terminal; nothing else changes.
"""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
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
