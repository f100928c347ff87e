"""What the epoch loop (loop.py) and the end of a run (shipping.py) read and change of their `Run`
(trainer.py, which builds these parts in `setup` and holds the phase order), declared here so that the
phases import nothing above them."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from engine.training.evaluator import Evaluated, Evaluator
from engine.training.state import StopSignal, TrainState


class RunContext(Evaluated, Protocol):
    t: dict  # cfg["train"]
    dc: dict  # cfg["data"]
    state: TrainState
    stop: StopSignal
    evaluator: Evaluator
    model: nn.Module  # the float model whose weights the optimizer updates (what is exported)
    net: nn.Module  # what the training step calls: `core` under DDP, compiled when asked
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.ReduceLROnPlateau
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    compile_mode: str | None
    steps_per_epoch: int
    n_train: int
    distiller: Any  # engine/training/distill.py's Distiller, or None

    def save(self, best: bool = False) -> None: ...

    def load_best(self) -> None: ...

    def ship(self, model: nn.Module) -> None: ...

    def method_fields(self, hook: str) -> dict[str, Any]: ...
