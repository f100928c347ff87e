"""Rooms for growth, used from a test file alone: an architecture registered here trains, exports,
evaluates and explains through chexui's own functions, with no edit anywhere else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import archs, config
from engine.errors import ConfigError
from engine.events import read_events
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


@pytest.fixture()
def tinynet():
    archs.register(archs.Arch("tinynet", build=TinyNet, head="head", cam_layer="body"))
    yield "tinynet"
    archs.unregister("tinynet")


def test_a_registered_architecture_is_validated_like_a_builtin_one(tinynet):
    assert config.validate({"model": {"arch": "tinynet", "pretrained": "none"}})["model"]["arch"] == "tinynet"
    with pytest.raises(ConfigError, match="tinynet has no ImageNet weights"):
        config.validate({"model": {"arch": "tinynet"}}, "p.toml")  # pretrained = "imagenet" by default
    archs.unregister("tinynet")
    with pytest.raises(ConfigError, match=r"model.arch' = 'tinynet': expected one of 'densenet121', 'resnet50'"):
        config.validate({"model": {"arch": "tinynet", "pretrained": "none"}}, "p.toml")


def test_a_registered_architecture_trains_exports_evaluates_and_explains(tinynet, tmp_path, tiny_demo):
    import tomllib

    from chexui.launch import save_config
    from engine import train
    from engine.evaluate import evaluate_run
    from engine.explain import explain_run
    from engine.models import build_model

    model = build_model("tinynet")
    assert model.head.out_features == 14
    cfg = config.validate(
        config.merge(
            tomllib.loads(TINY_PRESET.format(desc="toy", root=tiny_demo, epochs=2)),
            {"model": {"arch": "tinynet", "pretrained": "none"}, "export": {"enabled": True, "onnx": False}},
        )
    )
    cfg.pop("extends", None)
    run_dir = tmp_path / "toy-run"
    run_dir.mkdir()
    save_config(cfg, run_dir)
    assert train.main(["--config", str(run_dir / "config.toml"), "--run-dir", str(run_dir)]) == 0
    events = read_events(run_dir / "events.jsonl")
    assert events[-1]["type"] == "run_finished" and events[-1]["status"] == "completed", events[-1]
    exported = next(e for e in events if e["type"] == "exported")
    assert {a["kind"] for a in exported["artifacts"]} == {"fp32"}
    test = next(e for e in events if e["type"] == "evaluated" and e["split"] == "test")
    res = evaluate_run(run_dir, str(tiny_demo), "test")
    assert res["models"][0]["auc_mean"] == pytest.approx(test["auc_mean"], abs=1e-6)
    images = sorted((tiny_demo / "images").glob("*.png"))[:2]
    out = explain_run(run_dir, [str(p) for p in images], tmp_path / "explain", "top3")
    assert len(out["records"]) == 2 * 3 and not out["skipped"]
