"""`chexui watch` and `chexui stop`: follow or end a run that is already going."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from chexui import runs as runs_mod
from chexui.commands.common import RunRef, RunsDir, fail, find, say
from chexui.headless import HeadlessView
from engine.events import EVENTS_FILE


def watch(
    run_ref: RunRef,
    headless: Annotated[bool, typer.Option("--headless", help="text output instead of the TUI")] = False,
    runs_dir: RunsDir = None,
) -> None:
    """Follow a running or finished run from the start of its event stream."""
    from engine.events import follow

    run_dir = find(run_ref, runs_dir)
    if not headless and sys.stdout.isatty():  # without a terminal: the text output below
        from chexui.tui.app import make_app

        make_app(runs_mod.runs_dir(runs_dir), run=run_dir).run()
        raise typer.Exit(0)
    view = HeadlessView()
    for e in follow(run_dir / EVENTS_FILE, stop=lambda: runs_mod.launcher_process(run_dir) is None):
        view.handle(e)
    view.close()
    info = runs_mod.load_run(run_dir)
    raise typer.Exit(runs_mod.exit_code(info.status, info.events))


def stop(
    run_ref: RunRef,
    runs_dir: RunsDir = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the run to end")] = 120.0,
) -> None:
    """Stop a running run cleanly: checkpoint kept, status "stopped", no process left."""
    run_dir = find(run_ref, runs_dir)
    if not runs_mod.stop_run(run_dir, timeout):
        raise fail(f"run {run_dir.name} did not stop within {timeout:.0f}s", 1)
    say(f"{run_dir.name}: {runs_mod.load_run(run_dir).status}")
