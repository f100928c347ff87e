"""The command palette's chexui entries (ctrl+p): every action of the screen it was opened on, help,
the launcher on any preset, and any run of the runs dir by name. Textual's own entries (theme, keys,
screenshot, quit) stay beside them. The palette reads its titles as markup: names from outside go
through `markup_literal`."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import SystemCommand
from textual.screen import Screen

from chexui.safe import markup_literal
from chexui.tui.navigation import nav


def screen_commands(app: Any, screen: Screen) -> Iterable[SystemCommand]:
    """The screen's own key bindings (stop, compare, explain, the panes ...), each as a command."""
    for binding in screen.BINDINGS:
        if not isinstance(binding, tuple) and binding.description:
            yield SystemCommand(
                binding.description.capitalize(),
                f"key: {binding.key}",
                partial(screen.run_action, binding.action),
            )


def chexui_commands(app: Any, screen: Screen) -> Iterable[SystemCommand]:
    from chexui import presets as presets_mod
    from chexui import runs as runs_mod

    yield from screen_commands(app, screen)
    if getattr(screen, "HELP", None):
        yield SystemCommand("Help", "keys and panes of this screen (key: ?)", app.action_help)
    yield SystemCommand("Runs browser", "every run in the runs dir", nav(app).open_runs)
    for p in presets_mod.available():
        yield SystemCommand(
            markup_literal(f"Start preset {p.name}"),
            markup_literal(f"the launcher on it (ctrl+s starts): {p.description[:60]}"),
            partial(nav(app).open_launcher, p.name),
            discover=False,
        )
    for run_dir in runs_mod.run_dirs(Path(app.runs_dir)):
        yield SystemCommand(
            markup_literal(f"Open run {run_dir.name}"),
            "its monitor",
            partial(nav(app).open_monitor, run_dir),
            discover=False,
        )
