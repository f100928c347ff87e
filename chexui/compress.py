"""`chexui compress RUN`: the config of a post-training compression run made from a finished run's
config (engine/compression/parent.py has what the engine does with it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chexui import presets as presets_mod
from engine import config, rundir
from engine.errors import UserError
from engine.models import archs
from engine.training.parent import parent_best


def prune_section(prune: str, arch: str) -> dict[str, Any]:
    """The [prune] keys of `--prune 0.5|0.7|adaptive` (or any sparsity in (0, 0.99])."""
    keys: dict[str, Any] = {"enabled": True, "schedule": "one_shot", "best_from": "start"}
    if prune == "adaptive":  # the per-width targets of the architecture's training-time adaptive preset
        preset = archs.get(arch).adaptive_preset
        if preset is None:
            raise UserError(
                f"--prune adaptive: {arch} has no adaptive targets in chexui's architecture table "
                "(give a sparsity such as 0.5)"
            )
        p = presets_mod.resolve(preset)["prune"]
        return {
            **keys,
            "adaptive": p["adaptive"],
            "adaptive_default": p["adaptive_default"],
            "final_sparsity": p["final_sparsity"],
        }
    try:
        sparsity = float(prune)
    except ValueError:
        sparsity = -1.0
    if not 0.0 < sparsity <= 0.99:
        raise UserError(f"--prune {prune!r}: expected a sparsity in (0, 0.99] such as 0.5 or 0.7, or 'adaptive'")
    return {**keys, "final_sparsity": sparsity, "adaptive": []}


def channel_section(fraction: str) -> dict[str, Any]:
    """The [prune] keys of `--prune-channels 0.5` (the fraction of each group's channels removed, in
    (0, 0.95]): one-shot channel pruning ranked by first-order Taylor scores over 16 training batches
    (measured better than L1 norms after a 2-epoch fine-tune: REPRODUCING.md, channel pruning)."""
    try:
        value = float(fraction)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 0.95:
        raise UserError(
            f"--prune-channels {fraction!r}: expected a fraction of channels in (0, 0.95] such as 0.3 or 0.5"
        )
    return {
        "enabled": True,
        "schedule": "one_shot",
        "best_from": "start",
        "structure": "channel",
        "importance": "taylor",
        "final_sparsity": value,
        "adaptive": [],
        "target_macs": 0.0,
    }


def _parent_base_lr(parent: Path, cfg: dict, structural: bool = False) -> float:
    """The parent's learning rate at its last epoch (after its plateau cuts), per worker: a fine-tune
    continues where training ended rather than restarting at the initial rate. After a channel prune
    (`structural`) half the parent's initial rate, or its last if that is higher: removing half of every
    block's channels undoes more than the last rate repairs in a short fine-tune (DenseNet121, demo data,
    2 epochs distilled: 0.9523 at the last rate 1e-4, 0.9564 at 5e-4, 0.9480 at the initial 1e-3;
    REPRODUCING.md). `--set train.lr=...` overrides either."""
    if structural:
        return max(cfg["train"]["lr"] / 2, _parent_base_lr(parent, cfg))
    events = rundir.events(parent)
    last = rundir.last(events, "epoch_ended")
    started = rundir.first(events, "run_started") or {}
    if last is None:
        return cfg["train"]["lr"]
    world = started.get("world_size") or 1
    return last["lr"] / (world if cfg["train"]["lr_scale"] == "linear" else 1)


def compress_config(
    parent: Path,
    prune: str | None,
    finetune_epochs: int,
    ptq: bool,
    name: str | None,
    sets: list[str],
    nproc: int | None = None,
    prune_channels: str | None = None,
    distill: bool = False,
) -> dict[str, Any]:
    """The resolved config of a compress run from `parent` (exit-2 errors as UserError)."""
    if prune is None and prune_channels is None and not ptq:
        raise UserError("nothing to do: give --prune 0.5|0.7|adaptive, --prune-channels FRACTION and/or --ptq")
    if prune is not None and prune_channels is not None:
        raise UserError("--prune and --prune-channels: one pruning at a time (prune the channels, then compress again)")
    if finetune_epochs and prune is None and prune_channels is None:
        raise UserError("--finetune-epochs is a masked fine-tune after pruning: it needs --prune or --prune-channels")
    if distill and not finetune_epochs:
        raise UserError("--distill trains against the parent's outputs: it needs --finetune-epochs")
    cfg = rundir.load_config(parent)
    pruning = prune_section(prune, cfg["model"]["arch"]) if prune is not None else None
    if prune_channels is not None:
        pruning = channel_section(prune_channels)
    parent_best(parent)  # exit 2 now, not in the engine, when there is no best model
    from chexui.runs import load_run

    status = load_run(parent).status
    if status not in ("completed", "stopped"):  # a running parent's best.pt is a snapshot that moves on
        raise UserError(
            f"run {parent.name} is {status}: compress starts from a completed or stopped run's best "
            "model (wait for it to finish, or `chexui stop` it)"
        )
    if cfg["quantize"]["enabled"]:
        raise UserError(
            f"run {parent.name} trained with QAT: its int8 model is exported already; compress starts from a float run"
        )
    what = []
    if pruning is None and cfg["prune"]["enabled"] and cfg["prune"]["structure"] == "channel":
        # the parent's channels are gone already (its smaller model is what this run starts from): its
        # one-shot or gradual targets would cut as many again
        cfg["prune"]["enabled"] = False
    if pruning is not None:
        cfg["prune"] = {**cfg["prune"], **pruning}
        if prune_channels is not None:
            what.append(f"channel{round(float(prune_channels) * 100)}")
        else:
            what.append(f"prune{round(float(str(prune)) * 100)}" if prune != "adaptive" else "prune-adaptive")
        if finetune_epochs:
            what.append(f"ft{finetune_epochs}")
    # a compress run distils from its parent when asked, whatever its parent's own training did
    cfg["distill"] = {**cfg["distill"], "enabled": distill, **({"teacher": "parent"} if distill else {})}
    if distill:
        what.append("kd")
    if ptq:
        what.append("ptq")
    cfg["name"] = name or "-".join(["pt", *what])
    cfg["description"] = f"post-training {' + '.join(what)} of {parent.name}"
    cfg["sweep"] = ""
    cfg["model"]["pretrained"] = "none"  # the weights are the parent's
    cfg["train"]["epochs"] = finetune_epochs
    cfg["train"]["lr"] = _parent_base_lr(parent, cfg, structural=prune_channels is not None)
    cfg["compress"] = {**cfg["compress"], "parent": str(parent.resolve()), "ptq": ptq}
    cfg["export"]["enabled"] = True
    if nproc is not None:
        cfg["distributed"]["nproc"] = nproc
    return config.validate(config.apply_sets(cfg, sets), f"{parent / 'config.toml'} (compress)")
