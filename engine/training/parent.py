"""Post-training compression runs (`chexui compress`): a run whose `compress.parent` names a finished
run starts from that run's best model instead of training from scratch.

What differs from a training run is small and lives in the trainer's phases: the model is loaded from
the parent's `checkpoints/best.pt`; pruning (`prune.schedule = "one_shot"`) sets every layer to its final
target at once; epoch 0 (the parent's model, pruned) is validated and checkpointed as the best so far,
so a masked fine-tune (`train.epochs`, 0 for none) keeps it unless an epoch beats it; with
`compress.ptq` the best model is then quantized post-training (PT2E, calibrated on a seeded sample of
the training split, never validation or test) and that int8 model is the run's `test` evaluation and
its int8 artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import rundir
from engine.errors import UserError


def parent_best(parent: str | Path) -> Path:
    path = Path(parent) / rundir.BEST
    if not path.is_file():
        raise UserError(
            f"{path}: not found; compress starts from a run's best model (let the run finish an epoch, or resume it)"
        )
    return path


def parent_state(parent: str | Path) -> dict:
    """The float weights of the model the parent ships, from its best checkpoint (weights-only read): a
    channel-pruned parent's smaller model."""
    from engine import compression
    from engine.training import checkpoint  # (torch: the CLI's checks import this module without it)

    ck = checkpoint.load(parent_best(parent))
    model = compression.rebuilt_float(rundir.load_config(parent), ck)
    return ck["model"] if model is None else model.state_dict()


def parent_summary(parent: str | Path) -> dict:
    """What `run_started.parent` records: which run and model this one starts from, and the parent's
    training time (the post-training row's total compute is the parent's plus its own)."""
    from engine.fsutil import sha256

    events = rundir.events(parent)
    done: dict[str, Any] = rundir.last(events, "run_finished") or {}
    started = rundir.first(events, "run_started") or {}
    return {
        "run_id": Path(parent).name,
        "path": str(Path(parent).resolve()),
        "best_sha256": sha256(parent_best(parent)),
        "best_epoch": done.get("best_epoch"),
        "status": done.get("status"),
        "total_time_s": done.get("total_time_s"),
        "train_time_s": done.get("train_time_s"),
        "test_auc_mean": done.get("test_auc_mean"),
        "split_sha256": (started.get("dataset") or {}).get("split_sha256"),
    }
