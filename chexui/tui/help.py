"""`?` on any screen: that screen's keys, what each pane shows and where its numbers come from (each
screen's own `HELP`, chexui's text: Markdown)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Markdown

EVERYWHERE = """
| on every screen | |
|---|---|
| `?` | this help |
| `ctrl+p` | command palette (start a preset, open a run, compare, stop, explain, theme) |
| `q` | quit |
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close help")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(self.text + "\n" + EVERYWHERE)
        yield Footer()
