"""`[log] tensorboard = true`: TensorBoard event files under RUN_DIR/tensorboard/ (torch's SummaryWriter),
one scalar per `metrics()` name with the epoch as its step; the config as text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from engine.errors import StorageError
from engine.trackers import Tracker, flat_config, metrics

DIR = "tensorboard"


class TensorBoard(Tracker):
    name = "tensorboard"

    def __init__(self, run_dir: Path):
        where = run_dir / DIR
        if where.is_symlink():  # (a run dir may come from someone else: no write through a planted link)
            raise StorageError(f"{where}: a symbolic link; TensorBoard writes only into the run dir itself")
        self.writer = SummaryWriter(log_dir=str(where))
        self.epoch = 0

    def handle(self, event: dict[str, Any]) -> None:
        t = event["type"]
        if t == "run_started":
            text = "\n".join(f"    {k} = {v}" for k, v in flat_config(event["config"]).items())
            self.writer.add_text("config", text, 0)
        elif t == "epoch_ended":
            self.epoch = event["epoch"]
        elif t == "restarted":
            self.epoch = event["resumed_epoch"]
        for name, value in metrics(event).items():
            self.writer.add_scalar(name, value, self.epoch, walltime=event["ts"])
        if t in ("epoch_ended", "evaluated", "run_finished"):
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open(cfg: dict[str, Any], run_dir: Path) -> Tracker:  # noqa: A001 - the module's constructor, by name
    return TensorBoard(run_dir)
