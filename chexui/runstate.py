"""A run as its event stream tells it, folded once (`RunState.apply`, event by event): what the TUI's
monitor shows, what headless output needs to know of the run so far, `runs list/show`'s row and
compare's facts about a run (world size after restarts, the shipped model's epoch, its evaluations).
Pure Python: testable without a terminal."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from chexui.format import steady_epoch_s
from engine.events import final_status


@dataclass
class RunState:
    run_id: str = ""
    started: dict[str, Any] = field(default_factory=dict)  # the `run_started` event (config, dataset, parent)
    config: dict[str, Any] = field(default_factory=dict)
    preset: str = ""
    arch: str = ""
    world_size: int | None = None
    nnodes: int | None = None
    device: str = ""
    epochs_total: int | None = None
    started_ts: float | None = None
    last_ts: float | None = None
    epoch: int = 0
    step: int = 0
    steps: int = 0
    running_loss: list[tuple[float, float]] = field(default_factory=list)  # (epoch + step/steps, loss)
    epochs: list[dict[str, Any]] = field(default_factory=list)  # epoch_ended events
    memory_mb: list[float] = field(default_factory=list)
    gpu_util: list[float | None] = field(default_factory=list)  # per rank, % (CUDA with nvidia-ml-py)
    images_per_s: float | None = None
    val_auc: dict[str, float | None] = field(default_factory=dict)
    evaluations: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> its latest `evaluated`
    artifacts: list[dict[str, Any]] = field(default_factory=list)  # the latest `exported` event's
    best_saved: int | None = None  # the epoch of the last best checkpoint saved
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    finished: dict[str, Any] | None = None
    lr_curve: list[tuple[float, float, float]] = field(default_factory=list)  # LR range test: (lr, loss, smoothed)
    lr_suggested: dict[str, Any] | None = None  # its `lr_suggested` event
    events: list[dict[str, Any]] = field(default_factory=list)

    def apply(self, e: dict[str, Any]) -> None:
        self.events.append(e)
        t = e.get("type")
        self.last_ts = e.get("ts", self.last_ts)
        if t == "run_started":
            self.started, cfg = e, e.get("config", {})
            self.config = cfg
            self.run_id, self.world_size, self.nnodes = e.get("run_id", ""), e.get("world_size"), e.get("nnodes")
            self.device, self.started_ts = e.get("device", ""), e.get("ts")
            self.preset, self.arch = cfg.get("name", ""), cfg.get("model", {}).get("arch", "")
            self.epochs_total = cfg.get("train", {}).get("epochs")
            self.finished = None
            self.lr_curve, self.lr_suggested = [], None  # (a resumed LR range test starts its ramp again)
        elif t == "restarted":
            self.finished = None
            self.world_size = e.get("world_size", self.world_size)
            self.notes.append(f"resumed at epoch {e.get('resumed_epoch')} (attempt {e.get('attempt')})")
        elif t == "epoch_started":
            self.epoch, self.step = e["epoch"], 0
        elif t == "progress":
            self.epoch, self.step, self.steps = e["epoch"], e["step"], e["steps"]
            self.images_per_s = e.get("images_per_s")
            self.running_loss.append(((e["epoch"] - 1) + e["step"] / max(1, e["steps"]), e["loss"]))
        elif t == "epoch_ended":
            self.epochs.append(e)
            self.memory_mb = list(e.get("memory_mb") or [])
            self.gpu_util = list(e.get("gpu_util") or [])
            self.val_auc = dict(e.get("val_auc") or {})
            self.images_per_s = e.get("images_per_s")
        elif t == "lr_reduced":
            self.notes.append(f"epoch {e['epoch']}: learning rate reduced to {e['lr']:.2e}")
        elif t == "early_stopped":
            self.notes.append(f"early stop after epoch {e['epoch']}")
        elif t == "evaluated":
            self.evaluations[e["split"]] = e
        elif t == "exported":
            self.artifacts = list(e["artifacts"])
        elif t == "checkpoint_saved" and e.get("best"):
            self.best_saved = e["epoch"]
        elif t == "error":
            self.errors.append(e.get("message", ""))
        elif t == "lr_find_step":
            self.lr_curve.append((e["lr"], e["loss"], e["smoothed"]))
        elif t == "lr_suggested":
            self.lr_suggested = e
        elif t == "run_finished":
            self.finished = e

    @classmethod
    def fold(cls, events: list[dict[str, Any]]) -> RunState:
        state = cls()
        for e in events:
            state.apply(e)
        return state

    @property
    def test(self) -> dict[str, Any] | None:
        """The headline: the latest test evaluation of what the run ships."""
        return self.evaluations.get("test")

    @property
    def best_epoch(self) -> int | None:
        """The epoch of the model the run ships (its best checkpoint, chosen by validation loss): the
        finished run's `best_epoch`, else the last epoch saved as best (a resumed run's included)."""
        if self.finished is not None and self.finished.get("best_epoch"):
            return self.finished["best_epoch"]
        return self.best_saved

    @property
    def best_val(self) -> dict[str, Any] | None:
        """The `epoch_ended` of the shipped model's epoch (its last run, if a resume ran it again): not
        the highest AUROC of any epoch, which is not the model the best checkpoint holds."""
        best = self.best_epoch
        return next((e for e in reversed(self.epochs) if e["epoch"] == best), None)

    @property
    def smallest_artifact(self) -> dict[str, Any] | None:
        """The smallest file the run exported ({"kind", "path", "bytes", ...}), or None."""
        return min(self.artifacts, key=lambda a: a["bytes"], default=None)

    @property
    def duration_s(self) -> float | None:
        """From the first event to the run's end (or its latest event, while it runs)."""
        if not self.events:
            return None
        return (self.finished or self.events[-1])["ts"] - self.events[0]["ts"]

    @property
    def status(self) -> str:
        return final_status(self.events) or ("running" if self.events else "waiting")

    @property
    def is_lr_find(self) -> bool:
        """An LR range test (`chexui lr-find`), not a training run."""
        return bool((self.config.get("lr_find") or {}).get("enabled")) or bool(self.lr_curve)

    @property
    def has_sparsity(self) -> bool:
        return any(ep.get("sparsity") is not None for ep in self.epochs)

    def elapsed_s(self, now: float | None = None) -> float | None:
        if self.started_ts is None:
            return None
        end = self.finished["ts"] if self.finished else (now or time.time())
        return max(0.0, end - self.started_ts)

    def eta_s(self) -> float | None:
        """Remaining time at the mean epoch time so far, compilation left out (the epoch cap; early
        stopping may end sooner)."""
        if not self.epochs or not self.epochs_total or self.finished:
            return None
        per_epoch = sum(steady_epoch_s(ep) for ep in self.epochs) / len(self.epochs)
        done = len(self.epochs) + (self.step / self.steps if self.steps and self.epoch > len(self.epochs) else 0)
        return max(0.0, (self.epochs_total - done) * per_epoch)
