"""The lab's dashboards beside events.jsonl: `[log] tensorboard` and `[log] mlflow` (optional extras,
`pip install 'chexui[trackers]'`). A tracker is fed the very events rank 0 writes (engine/training/
trainer.py: `Run.emit`), so its values are events.jsonl's: one mapping, `metrics()`, names them for both.
Adding a tracker is one file here and one line in `TRACKERS`.

A tracker that fails (its store unreachable, its disk full) is switched off with one line in the log; the
run goes on: the event stream, not the tracker, is the run's record.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any

from engine.errors import UserError

# the [log] key that turns a tracker on -> its module under engine/trackers/
TRACKERS = {"tensorboard": "engine.trackers.tensorboard", "mlflow": "engine.trackers.mlflow"}
EXTRA = "pip install 'chexui[trackers]'"


class Tracker:
    """Receives every event rank 0 writes; `close()` at the end of the process."""

    name = ""

    def handle(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def metrics(event: dict[str, Any]) -> dict[str, float]:
    """An event's numbers under the names both trackers use (epoch_ended: per epoch; evaluated: the
    test split's AUROC). Undefined AUROCs (a label without positives) and absent values are left out."""
    out: dict[str, Any] = {}
    if event["type"] == "epoch_ended":
        out = {
            "loss/train": event["train_loss"],
            "loss/val": event["val_loss"],
            "auc/val_mean": event["val_auc_mean"],
            "lr": event["lr"],
            "time/epoch_s": event["epoch_time_s"],
            "time/images_per_s": event["images_per_s"],
            "sparsity": event.get("sparsity"),
            **{f"auc_val/{label}": v for label, v in (event.get("val_auc") or {}).items()},
            **{f"memory_mb/rank{i}": v for i, v in enumerate(event.get("memory_mb") or [])},
        }
    elif event["type"] == "evaluated":
        split = event["split"]
        out = {f"auc/{split}_mean": event["auc_mean"], **{f"auc_{split}/{k}": v for k, v in event["auc"].items()}}
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def flat_config(cfg: dict[str, Any]) -> dict[str, str]:
    """The run config as "section.key" -> value text (the trackers' hyperparameters)."""
    out = {}
    for section, table in cfg.items():
        if isinstance(table, dict):
            out.update({f"{section}.{k}": str(v)[:500] for k, v in table.items()})
        else:
            out[section] = str(table)[:500]
    return out


class Trackers:
    """The run's trackers (rank 0 only); `handle` feeds each every event."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path):
        self.active: list[Tracker] = []
        wanted = [name for name in TRACKERS if cfg["log"][name]]
        for name in wanted:
            try:
                module = importlib.import_module(TRACKERS[name])
            except ImportError as e:
                raise UserError(f"[log] {name}: needs the trackers extra ({EXTRA}): {e}") from None
            self.active.append(module.open(cfg, run_dir))

    def handle(self, event: dict[str, Any]) -> None:
        for tracker in list(self.active):
            try:
                tracker.handle(event)
            except Exception as e:  # noqa: BLE001 - any failure of a dashboard: off, the run goes on
                print(f"warning: [log] {tracker.name} switched off: {type(e).__name__}: {e}", file=sys.stderr)
                self.active.remove(tracker)

    def close(self) -> None:
        for tracker in self.active:
            try:
                tracker.close()
            except Exception as e:  # noqa: BLE001
                print(f"warning: [log] {tracker.name}: {type(e).__name__}: {e}", file=sys.stderr)
        self.active = []
