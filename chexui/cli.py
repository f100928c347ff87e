"""The `chexui` command line (typer): the app, its one error handler, and the table of its commands.

The commands live in `chexui/commands/`, one module per group. Exit codes: 0 ok, 1 run failed,
2 bad usage/config/data (any `UserError`, wherever it is raised).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from chexui import runs as runs_mod
from chexui.commands import data, follow, lr_find, models, presets, run, runs, study
from chexui.commands.common import RunsDir, err
from engine.errors import UserError
from engine.sanitize import clean


class Commands(TyperGroup):
    """The one error handler: a `UserError` from any command is one line on stderr and exit 2."""

    def invoke(self, ctx: Any) -> Any:  # (click's Context, which typer vendors and does not export)
        try:
            return super().invoke(ctx)
        except UserError as e:
            err.print(f"error: {clean(str(e))}", markup=False)
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=Commands,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Train and compress CheXNet-style chest X-ray classifiers. Without a command: the TUI.",
)


@app.callback(invoke_without_command=True)
def tui(ctx: typer.Context, runs_dir: RunsDir = None) -> None:
    """Without a command: the full-screen app (launcher, live monitor, runs browser)."""
    if ctx.invoked_subcommand is None:
        from chexui.tui.app import make_app

        make_app(runs_mod.runs_dir(runs_dir)).run()


app.command()(run.run)
app.command()(run.compress)
app.command("lr-find")(lr_find.lr_find_cmd)
app.command()(follow.watch)
app.command()(follow.stop)
app.add_typer(runs.app, name="runs")
app.command("eval")(models.eval_cmd)
app.command("predict")(models.predict_cmd)
app.command("explain")(models.explain_cmd)
app.command("bench")(models.bench_cmd)
app.command()(study.sweep)
app.command("compare")(study.compare_cmd)
app.command("report")(study.report_cmd)
app.add_typer(presets.app, name="presets")
app.add_typer(data.app, name="data")


def main() -> None:
    try:
        app()
    except SystemExit as e:
        if "torch" not in sys.modules:
            raise
        # a command that loaded torch (eval, bench, predict...): skip the interpreter's teardown of
        # its modules, over a second per process (measured); output is flushed, files are closed
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    main()
