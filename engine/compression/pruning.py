"""Magnitude pruning as a compression method: gradual (a degree-4 polynomial schedule, the study's)
or one-shot (final targets from step 0, `chexui compress --prune`). The mechanics are engine/compression/prune.py."""

from __future__ import annotations

import json
from typing import Any

from torch import nn

from engine.compression.base import Method, MethodContext, register
from engine.compression.prune import Pruner
from engine.fsutil import write_atomic

LAYERS_FILE = "prune_layers.json"  # per-layer sparsity by epoch, in the run dir


@register
class Pruning(Method):
    name, enabled_by = "prune", "prune.enabled"
    artifacts = ("sparse",)

    @classmethod
    def enabled(cls, cfg: dict) -> bool:
        return bool(cfg["prune"]["enabled"]) and cfg["prune"]["structure"] == "unstructured"

    def __init__(self, model: nn.Module, ctx: MethodContext) -> None:
        super().__init__(model, ctx)
        self.pruner = Pruner(model, self.cfg, ctx.steps_per_epoch, ctx.cfg["model"]["arch"])
        if self.cfg["schedule"] == "one_shot":
            self.pruner.step(0)  # final masks from the starting weights (a resume restores its own)

    def parts(self) -> dict[str, Any]:
        return {"prune": self.pruner}

    def after_step(self, global_step: int) -> None:
        self.pruner.step(global_step)

    def settled(self, global_step: int) -> bool:
        # while the schedule runs, a less pruned model is not a candidate for best (it would be exported
        # instead of the pruned one); prune.best_from = "start" lifts that (the study's Keras callbacks
        # watched every epoch)
        return self.cfg["best_from"] == "start" or self.pruner.finished(global_step)

    def epoch_fields(self) -> dict[str, Any]:
        return {"sparsity": self.pruner.sparsity()}

    def epoch_end(self, epoch: int) -> None:
        if self.ctx.is_main:
            path = self.ctx.run_dir / LAYERS_FILE
            history = json.loads(path.read_text()) if path.is_file() else {}
            history[str(epoch)] = self.pruner.layer_sparsity()
            write_atomic(path, json.dumps(history))

    def exported_fields(self) -> dict[str, Any]:
        return {"sparsity": self.pruner.sparsity()}
