"""The run's one-line status (id, preset, arch, world, device, elapsed, ETA, status; its last error)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import var
from textual.widgets import Static


class StatusLine(Static):
    text: var[Text] = var(Text)

    def watch_text(self, old: Text, text: Text) -> None:
        # the elapsed time moves every second: lay the screen out again (the line may wrap to another
        # height) only when the text's length or its line count changed
        same = len(old.plain) == len(text.plain) and old.plain.count("\n") == text.plain.count("\n")
        self.update(text, layout=not same or not self.size.height)
