"""The run's one-line status (id, preset, arch, world, device, elapsed, ETA, status; its last error)."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static


class StatusLine(Static):
    text: reactive[Text] = reactive(Text)

    def watch_text(self, text: Text) -> None:
        self.update(text)
