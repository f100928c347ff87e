"""Quitting while a run is live: stop it, or leave it running in the background."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class QuitDialog(ModalScreen[str]):
    """Dismissed with "stop", "leave" or "cancel"."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("The run is still going. Stop it, or leave it running in the background?")
            with Horizontal():
                yield Button("Stop the run", id="stop", variant="error")
                yield Button("Leave it running", id="leave", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def choose(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)
