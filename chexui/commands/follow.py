"""`chexui watch` and `chexui stop`: follow or end a run that is already going."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from chexui import runs as runs_mod
from chexui import slurm_jobs
from chexui.commands.common import RunRef, RunsDir, fail, find, say
from chexui.headless import HeadlessView
from engine.events import EVENTS_FILE
from engine.sanitize import clean


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
    job_id = runs_mod.load_run(run_dir).slurm_job
    ended = (
        (lambda: runs_mod.launcher_process(run_dir) is None) if job_id is None else _job_ended(job_id, run_dir, view)
    )
    for e in follow(run_dir / EVENTS_FILE, stop=ended):
        view.handle(e)
    view.close()
    info = runs_mod.load_run(run_dir)
    raise typer.Exit(runs_mod.exit_code(info.status, info.events))


def _job_ended(job_id: str, run_dir: Path, view: HeadlessView, every_s: float = 2.0) -> Callable[[], bool]:
    """For `watch` of a SLURM run: whether its job has ended (asked of the scheduler every few seconds),
    saying each change of the job's state (pending, running, requeued, ...)."""
    said, asked, ended = [""], [0.0], [False]

    def check() -> bool:
        if time.monotonic() - asked[0] >= every_s:
            asked[0] = time.monotonic()
            job = slurm_jobs.own_job(job_id, run_dir)  # (the same proof as runs list, the monitor and stop)
            line = job.describe() if job else f"SLURM job {job_id}: not known to the scheduler here as this run's"
            if line != said[0]:
                view.say(clean(line))
                said[0] = line
            ended[0] = job is None or not job.active
        return ended[0]

    return check


def stop(
    run_ref: RunRef,
    runs_dir: RunsDir = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for the run to end")] = 120.0,
) -> None:
    """Stop a running run cleanly: checkpoint kept, status "stopped", no process left. Exits 0 when the run
    ended stopped (or completed meanwhile); when it ended failed, prints why and exits as `run` would."""
    run_dir = find(run_ref, runs_dir)
    if not runs_mod.stop_run(run_dir, timeout):
        raise fail(f"run {run_dir.name} did not stop within {timeout:.0f}s", 1)
    info = runs_mod.load_run(run_dir)
    errors = info.state.errors
    say(f"{run_dir.name}: {info.status}" + (f" ({errors[-1]})" if info.status == "failed" and errors else ""))
    if code := runs_mod.exit_code(info.status, info.events):
        raise typer.Exit(code)
