"""The chexui app: launcher, live monitor and runs browser. `make_app` is shared by the CLI and tests.

The App owns navigation (`open_monitor`, `open_runs`, `open_launcher`, `open_compare`,
`open_explanations`): screens ask it to move and never import one another. `?` opens the current
screen's help (its `HELP`), ctrl+p the command palette (chexui/tui/commands.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen


class ChexApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "chexui"
    # on every screen (the monitor's own `q` first asks about a run it started)
    BINDINGS = [Binding("q", "quit", "Quit"), Binding("question_mark", "help", "Help")]

    def __init__(self, runs_dir: Path, run: Path | None = None, start: str = "launcher", poll_s: float = 0.25):
        super().__init__()
        self.runs_dir, self.run_dir, self.start, self.poll_s = Path(runs_dir), run, start, poll_s

    def on_mount(self) -> None:
        if self.run_dir is not None:
            self.open_monitor(self.run_dir)
        elif self.start == "runs":
            self.open_runs()
        else:
            self.open_launcher()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        from chexui.tui.commands import chexui_commands

        yield from chexui_commands(self, screen)
        yield from super().get_system_commands(screen)  # Textual's own: theme, keys, screenshot, quit

    def action_help(self) -> None:
        from chexui.tui.help import HelpScreen

        text = getattr(self.screen, "HELP", None)
        if text:
            self.push_screen(HelpScreen(text))

    def open_monitor(self, run_dir: Path, replace: bool = False) -> None:
        """A run's monitor, over the current screen (or instead of it: a started run replaces the launcher)."""
        from chexui.tui.monitor import MonitorScreen

        screen = MonitorScreen(Path(run_dir), self.poll_s)
        self.switch_screen(screen) if replace else self.push_screen(screen)

    def open_runs(self) -> None:
        """Back to the runs browser: the screen below when there is one, else a new browser."""
        from chexui.tui.runs_browser import RunsScreen

        below = self.screen_stack[-2] if len(self.screen_stack) > 2 else None
        if isinstance(below, RunsScreen):
            self.pop_screen()
        elif len(self.screen_stack) >= 2:
            self.switch_screen(RunsScreen(self.runs_dir))
        else:
            self.push_screen(RunsScreen(self.runs_dir))

    def open_launcher(self, preset: str | None = None) -> None:
        from chexui.tui.launcher import LauncherScreen

        self.push_screen(LauncherScreen(self.runs_dir, preset or "demo"))

    def open_compare(self, run_dirs: list[Path]) -> None:
        from chexui.tui.compare_screen import CompareScreen

        self.push_screen(CompareScreen(run_dirs))

    def open_explanations(self, run_dir: Path) -> None:
        from chexui.tui.explanations import ExplanationsScreen

        self.push_screen(ExplanationsScreen(run_dir))


def make_app(
    runs_dir: Path | str, run: Path | str | None = None, start: str = "launcher", poll_s: float = 0.25
) -> ChexApp:
    """The app on a runs dir; with `run`, opened on that run's monitor (live or replayed)."""
    return ChexApp(Path(runs_dir), Path(run) if run else None, start, poll_s)
