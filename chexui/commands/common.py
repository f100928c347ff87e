"""What every command shares: the options (one spelling each), plain output, progress bars."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from chexui import runs as runs_mod
from chexui.format import json_text
from chexui.headless import console, plain_mode
from engine.sanitize import clean

err = console(stderr=True)

# ---------------------------------------------------------------- the shared options
RunsDir = Annotated[str | None, typer.Option("--runs-dir", help="runs dir (default ./runs or $CHEXUI_RUNS_DIR)")]
RunRef = Annotated[str, typer.Argument(metavar="RUN", help="a run id, a unique part of one, or a path")]
AsJson = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Sets = Annotated[list[str], typer.Option("--set", "-s", help="override: SECTION.KEY=VALUE (repeatable)")]
Headless = Annotated[bool, typer.Option("--headless", help="plain progress output, no TUI")]
Detach = Annotated[bool, typer.Option("--detach", help="run in the background; follow with `chexui watch`")]
Trust = Annotated[
    bool,
    typer.Option(
        "--trust",
        help="load an artifact whose sha256 does not match the one recorded at export (only the hash check is skipped)",
    ),
]


def say(text: str) -> None:
    """Plain output that may hold run names, paths or preset text: no control characters."""
    print(clean(text))


def fail(message: str, code: int = 2) -> typer.Exit:
    """A one-line error and the exit code to raise (`UserError` needs no call: the app maps it to 2)."""
    err.print(f"error: {clean(message)}", markup=False)
    return typer.Exit(code)


def find(run_ref: str, runs_dir: str | None) -> Path:
    """RUN (an id, a unique part of one, or a path) in the runs dir; a `UserError` saying why if not."""
    return runs_mod.find_run(run_ref, runs_mod.runs_dir(runs_dir))


def print_json(obj: Any) -> None:
    print(json_text(obj))


def progress_bar(label: str) -> tuple[Callable[[int, int], None], Any]:
    """A rich progress callback (done, total) in a terminal; occasional plain lines otherwise."""
    if plain_mode(sys.stderr):
        state = {"t": 0.0}

        def cb(done: int, total: int) -> None:
            if done == total or time.monotonic() - state["t"] > 5:
                state["t"] = time.monotonic()
                print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

        return cb, None
    from rich.progress import Progress

    prog = Progress(console=err, transient=True)
    task = prog.add_task(label, total=None)
    prog.start()
    return (lambda done, total: prog.update(task, completed=done, total=total)), prog


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """`progress_bar` as a context manager (engine.data.dataset's progress hook)."""
    cb, prog = progress_bar(label)
    try:
        yield cb
    finally:
        if prog:
            prog.stop()


def prepare_data(cfg: dict) -> None:
    """Check the dataset (a `UserError` on bad data) and build the demo set / cache with a progress bar,
    so the engine (engine.data.dataset, the same decision) finds them ready."""
    from engine.data import dataset

    dataset.prepare(cfg["data"], progress)


def new_prepared_run(cfg: dict, base: Path, name: str) -> Path:
    """A new run dir holding `cfg`, made once its data is ready (a bad dataset leaves no empty run behind);
    a runs dir or name it could not have is refused first, before the data takes minutes."""
    from chexui.launch import save_config

    runs_mod.check_new_run(base, name)
    prepare_data(cfg)
    run_dir = runs_mod.new_run_dir(base, name)
    save_config(cfg, run_dir)
    return run_dir
