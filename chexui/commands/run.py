"""`chexui run` and `chexui compress`: make a run dir and start the engine on it (TUI, headless, detached)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

from chexui import presets as presets_mod
from chexui import runs as runs_mod
from chexui.commands.common import Detach, Headless, RunsDir, Sets, find, new_prepared_run, prepare_data, say
from chexui.headless import HeadlessView
from engine import config, rundir
from engine.errors import UserError
from engine.events import EVENTS_FILE
from engine.rundir import CONFIG_FILE


def run(
    preset: Annotated[str | None, typer.Option("--preset", "-p", help="preset NAME or FILE (default: demo)")] = None,
    set_: Sets = [],  # noqa: B006 (typer reads the default; it is never mutated)
    data: Annotated[str | None, typer.Option("--data", help="NIH-layout dataset dir (sets data.root)")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="processes per node (GPUs)")] = None,
    nnodes: Annotated[int, typer.Option("--nnodes", min=1, help="number of nodes")] = 1,
    node_rank: Annotated[int, typer.Option("--node-rank", min=0, help="this node's rank")] = 0,
    rdzv_endpoint: Annotated[str | None, typer.Option("--rdzv-endpoint", help="HOST:PORT of the rendezvous")] = None,
    runs_dir: RunsDir = None,
    name: Annotated[str | None, typer.Option("--name", help="run name (default: the preset's name)")] = None,
    headless: Headless = False,
    detach: Detach = False,
    resume: Annotated[str | None, typer.Option("--resume", help="continue a stopped or failed RUN")] = None,
    slurm: Annotated[
        bool, typer.Option("--slurm", help="submit the run as a SLURM job (the preset's [slurm] section)")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="with --slurm: print the sbatch script only")] = False,
) -> None:
    """Train a model: resolve the preset, start the engine under torchrun, show progress."""
    from chexui.launch import NodeSpec, save_config

    if dry_run and not slurm:
        raise UserError("--dry-run goes with --slurm (it prints the sbatch script instead of submitting it)")
    if slurm and (resume or nnodes > 1 or rdzv_endpoint or detach):
        raise UserError(
            "--slurm: the job's nodes come from slurm.nodes (--set slurm.nodes=N); drop --nnodes, "
            "--rdzv-endpoint, --detach and --resume"
        )
    base = runs_mod.runs_dir(runs_dir)
    node = NodeSpec(nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)
    if nnodes > 1 and not rdzv_endpoint:
        raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the node-rank-0 host)")
    if resume:
        if preset or data or nproc:
            raise UserError("--resume continues a run with its saved config; use --set to change keys")
        run_dir = _resumable(runs_mod.find_run(resume, base))
        cfg = rundir.load_config(run_dir)
        if set_:
            cfg = config.validate(config.apply_sets(cfg, set_), str(run_dir / CONFIG_FILE))
            save_config(cfg, run_dir)
        prepare_data(cfg)
    else:
        cfg = presets_mod.resolve(preset or "demo", set_, data, nproc, nnodes if nnodes > 1 else None)
        if slurm:
            return submit_slurm(cfg, base, name or cfg.get("name", "run"), dry_run)
        run_dir = new_prepared_run(cfg, base, name or cfg.get("name", "run"))
    start(cfg, run_dir, base, node, headless, detach)


def submit_slurm(cfg: dict, base: Path, name: str, dry_run: bool) -> None:
    """`run --slurm`: --dry-run prints the script a new run would get, and makes nothing; otherwise the
    run dir is made and its job submitted (chexui/slurm.py: submit_run)."""
    from chexui import slurm

    if dry_run:
        slurm.check_gpus(cfg)
        sys.stdout.write(slurm.script(cfg, base.resolve() / runs_mod.run_id(name)))
        return
    run_dir, job = slurm.submit_run(cfg, base, name, prepare_data)
    sl = cfg["slurm"]
    say(
        f"run {run_dir.name}: SLURM job {job} ({sl['nodes']} node(s) x {cfg['distributed']['nproc']} "
        f"process(es)); script {run_dir / slurm.SCRIPT}"
    )
    say(f"follow it: chexui watch {run_dir.name} --runs-dir {base}")


def _resumable(run_dir: Path) -> Path:
    """The run dir if `run --resume` may continue it, else a `UserError` saying why."""
    if runs_mod.launcher_process(run_dir) is not None:
        raise UserError(f"run {run_dir.name} is running already (chexui stop {run_dir.name})")
    info = runs_mod.load_run(run_dir)
    if info.problem:  # (its events are not a regular file: nothing is appended through a link)
        raise UserError(info.problem)
    if info.status == "completed":
        raise UserError(
            f"run {run_dir.name} is completed: nothing to resume (start a new run, "
            "or `chexui eval` / `chexui bench` it)"
        )
    return run_dir


def compress(
    run_ref: Annotated[str, typer.Argument(metavar="RUN", help="a finished run (its checkpoints/best.pt)")],
    prune: Annotated[
        str | None,
        typer.Option(
            "--prune",
            help="one-shot magnitude pruning: 0.5, 0.7 (any "
            "sparsity) or adaptive (the per-width targets of the adaptive presets)",
        ),
    ] = None,
    prune_channels: Annotated[
        str | None,
        typer.Option(
            "--prune-channels",
            metavar="FRACTION",
            help="one-shot channel pruning: remove this fraction of each layer's channels (0.3, 0.5): a "
            "physically smaller, faster model",
        ),
    ] = None,
    finetune_epochs: Annotated[
        int, typer.Option("--finetune-epochs", min=0, help="masked fine-tune epochs after pruning")
    ] = 0,
    distill: Annotated[
        bool,
        typer.Option("--distill", help="fine-tune against the parent's outputs too (knowledge distillation)"),
    ] = False,
    ptq: Annotated[
        bool,
        typer.Option(
            "--ptq",
            help="post-training static int8 quantization (PT2E), calibrated on a seeded sample of the training split",
        ),
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="run name (default: pt-<what it does>)")] = None,
    set_: Sets = [],  # noqa: B006
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="processes (GPUs) for the fine-tune")] = None,
    runs_dir: RunsDir = None,
    headless: Headless = False,
    detach: Detach = False,
) -> None:
    """Compress a trained run after training, as a new run that records its parent: prune its best model
    (weights, or whole channels) at once (optionally fine-tune with the masks held, distilling from the
    parent) and/or quantize it to int8. Stop and resume it
    like any run (`chexui run --resume`); `chexui compare` puts it beside training-time compression."""
    from chexui.compress import compress_config
    from chexui.launch import NodeSpec

    base = runs_mod.runs_dir(runs_dir)
    cfg = compress_config(
        find(run_ref, runs_dir), prune, finetune_epochs, ptq, name, set_, nproc, prune_channels, distill
    )
    run_dir = new_prepared_run(cfg, base, cfg["name"])
    start(cfg, run_dir, base, NodeSpec(), headless, detach)


def start(cfg: dict, run_dir: Path, base: Path, node, headless: bool, detach: bool) -> None:
    """Launch the engine on a prepared run dir: in the background, under the TUI, or followed headless."""
    from chexui.launch import start_detached

    if detach:
        pid = start_detached(run_dir, base, node)
        say(f"started {run_dir.name} in the background (pid {pid})")
        say(f"  follow: chexui watch {run_dir.name} --headless")
        say(f"  stop:   chexui stop {run_dir.name}")
        raise typer.Exit(0)
    if not headless and sys.stdout.isatty():  # without a terminal there is no TUI: plain output
        start_detached(run_dir, base, node)
        from chexui.tui.app import make_app

        make_app(base, run=run_dir).run()
        raise typer.Exit(0)
    runs_mod.write_launcher(run_dir)
    view = HeadlessView()
    view.say(f"run dir: {run_dir}")
    raise typer.Exit(launch_and_follow(cfg, run_dir, node, view))


def launch_and_follow(cfg: dict, run_dir: Path, node, view: HeadlessView) -> int:
    from chexui.launch import Launcher, run_to_end
    from engine.events import EventTail

    launcher, tail = Launcher(cfg, run_dir, node), EventTail(run_dir / EVENTS_FILE)
    code = asyncio.run(run_to_end(launcher, lambda: view.handle_all(tail.poll())))
    view.close()
    if launcher.log_error:
        view.say(f"warning: {launcher.log_error}")
    return code
