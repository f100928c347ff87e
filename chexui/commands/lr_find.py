"""`chexui lr-find PRESET`: the LR range test of a preset under torchrun, followed to its suggestion."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from chexui import runs as runs_mod
from chexui.commands.common import RunsDir, Sets, new_prepared_run
from chexui.headless import HeadlessView
from engine.events import EVENTS_FILE, read_events


def lr_find_cmd(
    preset: Annotated[str, typer.Argument(metavar="PRESET", help="preset NAME or FILE")] = "demo",
    set_: Sets = [],  # noqa: B006 (typer reads the default; it is never mutated)
    data: Annotated[str | None, typer.Option("--data", help="NIH-layout dataset dir (sets data.root)")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="processes (GPUs)")] = None,
    runs_dir: RunsDir = None,
    apply: Annotated[
        bool,
        typer.Option("--apply", help="write the preset with train.lr = the suggestion (user presets: NAME-lr.toml)"),
    ] = False,
    apply_to: Annotated[
        Path | None, typer.Option("--apply-to", metavar="FILE", help="--apply, to this preset file")
    ] = None,
) -> None:
    """Find the initial learning rate: the LR range test (the LR grows exponentially over
    lr_find.steps training steps of the preset's float model; the smoothed loss; a stop once it
    diverges) under torchrun like a run, and its suggestion by the rule lr_find.rule names. The curve is
    written as lr_find.png and events in a run dir; --apply writes the preset with that LR."""
    from chexui import lr_find
    from chexui.commands.run import launch_and_follow
    from chexui.launch import NodeSpec

    cfg = lr_find.test_config(preset, set_, data, nproc)
    target = lr_find.preset_path(cfg, apply_to) if apply or apply_to else None
    run_dir = new_prepared_run(cfg, runs_mod.runs_dir(runs_dir), cfg["name"])
    runs_mod.write_launcher(run_dir)
    view = HeadlessView()
    view.say(f"run dir: {run_dir}")
    code = launch_and_follow(cfg, run_dir, NodeSpec(), view)
    found = next((e for e in reversed(read_events(run_dir / EVENTS_FILE)) if e["type"] == "lr_suggested"), None)
    if code == 0 and found is not None and found["suggested_lr"] is not None:
        view.say(f"curve: {run_dir / found.get('png', 'lr_find.png')}")
        if target is not None:
            lr_find.write_preset(lr_find.applied_preset(preset, set_, data, nproc, found["train_lr"]), target)
            view.say(f"preset written: {target} (chexui run --preset {target})")
    elif code == 0:
        code = 1  # (the reason is the lr_suggested line printed above)
    raise typer.Exit(code)
