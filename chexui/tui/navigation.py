"""What a screen may ask of the App: the App owns navigation, and screens reach it through this
interface only (they never import the App or one another)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, cast


class Navigation(Protocol):
    def open_monitor(self, run_dir: Path, replace: bool = False) -> None: ...

    def open_runs(self) -> None: ...

    def open_launcher(self, preset: str | None = None) -> None: ...

    def open_compare(self, run_dirs: list[Path]) -> None: ...

    def open_explanations(self, run_dir: Path) -> None: ...


def nav(app: Any) -> Navigation:
    """The running App, as the navigation it provides (chexui/tui/app.py: ChexApp)."""
    return cast(Navigation, app)


def still_shown(screen: Any, *selectors: Any) -> bool:
    """Whether a worker's result can still be shown on `screen`: it is attached and has the widgets the
    result goes to. A worker thread's result can come after its screen was closed, or while the App tears
    the screen's widgets down on exit (once in the suite: NoMatches for the runs browser's title)."""
    return bool(screen.is_attached and all(screen.query(s) for s in selectors))
