"""A toy architecture and the engine run in this process, for the tests whose subject is chexui's code
around a network rather than a network: a registered two-conv model trains through the same `engine.train`
entry point torchrun starts, in a fraction of a real network's time (its compile too)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import tomllib
import torch
from torch import nn

from engine import config
from engine.events import read_events
from engine.models import archs
from tests.conftest import TINY_PRESET


class TinyNet(nn.Module):
    """A two-conv network: its classifier is `head`, its last conv block `body`."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(x)).flatten(1))


@contextmanager
def registered_tinynet() -> Iterator[str]:
    """`tinynet` in the architecture table of this process while the block runs."""
    archs.register(archs.Arch("tinynet", build=TinyNet, head="head", cam_layer="body"))
    try:
        yield "tinynet"
    finally:
        archs.unregister("tinynet")


def tiny_config(tiny_demo: Path, **sections) -> dict:
    """The tests' tiny preset on the tiny demo set, as a resolved config, with `sections` merged in."""
    base = tomllib.loads(TINY_PRESET.format(desc="toy", root=tiny_demo, epochs=2))
    cfg = config.validate(config.merge(base, {"export": {"enabled": True, "onnx": False}, **sections}))
    cfg.pop("extends", None)
    return cfg


def train_in_process(cfg: dict, run_dir: Path) -> list[dict]:
    """The engine's entry point in this process (one rank), as torchrun would start it: the events of a
    completed run. (A registration made in this process is seen only here: a torchrun worker would not.)"""
    from chexui.launch import save_config
    from engine import train

    run_dir.mkdir()
    save_config(cfg, run_dir)
    assert train.main(["--config", str(run_dir / "config.toml"), "--run-dir", str(run_dir)]) == 0
    events = read_events(run_dir / "events.jsonl")
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed", events[-1]
    return events
