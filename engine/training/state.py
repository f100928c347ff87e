"""What one training process keeps across a stop and a restart, and how it is told to stop: the typed
train state and the RNG as checkpoint parts, the stop signal, and the divergence that ends a run."""

from __future__ import annotations

import math
import os
import signal
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from engine.rundir import STOP_FILE


class Diverged(Exception):
    """The loss is not finite, or far worse than guessing: no later epoch can be trusted."""


class StopSignal:
    """SIGTERM/SIGINT handling. A requested stop (STOP_FILE present) ends at the next step boundary
    with a checkpoint; otherwise torchrun is tearing the group down (a peer died): leave at once and
    keep the last consistent checkpoint, which a restart resumes from."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.requested = run_dir, False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if (self.run_dir / STOP_FILE).exists():
            self.requested = True
        else:
            os._exit(128 + signum)


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint (as "state") and restored on resume."""

    epoch: int = 0  # last completed epoch
    step: int = 0  # steps done in the current epoch (a stop can land mid-epoch)
    global_step: int = 0  # optimizer steps since the start (the pruning schedule's clock)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    loss_sum: float = 0.0  # the current epoch's train losses (every step's)
    loss_n: float = 0.0
    train_time_s: float = 0.0
    wall_time_s: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


class RNGState:
    """The CPU generator (model init, dropout) as a checkpoint part."""

    def state_dict(self) -> torch.Tensor:
        return torch.get_rng_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        torch.set_rng_state(state)
