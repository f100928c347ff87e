"""The chexui app: launcher, live monitor and runs browser. `make_app` is shared by the CLI and tests."""

from __future__ import annotations

from pathlib import Path

from textual.app import App


class ChexApp(App):
    CSS_PATH = "app.tcss"
    TITLE = "chexui"

    def __init__(self, runs_dir: Path, run: Path | None = None, start: str = "launcher", poll_s: float = 0.25):
        super().__init__()
        self.runs_dir, self.run_dir, self.start, self.poll_s = Path(runs_dir), run, start, poll_s

    def on_mount(self) -> None:
        from chexui.tui.launcher import LauncherScreen
        from chexui.tui.monitor import MonitorScreen
        from chexui.tui.runs_browser import RunsScreen
        if self.run_dir is not None:
            self.push_screen(MonitorScreen(self.run_dir, self.poll_s))
        elif self.start == "runs":
            self.push_screen(RunsScreen(self.runs_dir))
        else:
            self.push_screen(LauncherScreen(self.runs_dir))


def make_app(runs_dir: Path | str, run: Path | str | None = None, start: str = "launcher",
             poll_s: float = 0.25) -> ChexApp:
    """The app on a runs dir; with `run`, opened on that run's monitor (live or replayed)."""
    return ChexApp(Path(runs_dir), Path(run) if run else None, start, poll_s)
