"""Rooms for growth, used from tests alone: an architecture registered by a test (tests/toy.py's TinyNet,
the `tinynet` fixture) and a compression method written in this file train, export, evaluate and explain
through chexui's own functions, with no edit anywhere else."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engine import config
from engine.errors import ConfigError
from engine.models import archs
from tests.toy import tiny_config, train_in_process


def test_a_registered_architecture_is_validated_like_a_builtin_one(tinynet):
    assert config.validate({"model": {"arch": "tinynet", "pretrained": "none"}})["model"]["arch"] == "tinynet"
    with pytest.raises(ConfigError, match="tinynet has no ImageNet weights"):
        config.validate({"model": {"arch": "tinynet"}}, "p.toml")  # pretrained = "imagenet" by default
    archs.unregister("tinynet")
    with pytest.raises(ConfigError, match=r"model.arch' = 'tinynet': expected one of 'densenet121', 'resnet50'"):
        config.validate({"model": {"arch": "tinynet", "pretrained": "none"}}, "p.toml")


def test_a_registered_architecture_trains_exports_evaluates_and_explains(tinynet, tmp_path, tiny_demo):
    from engine.evaluation.evaluate import evaluate_run
    from engine.inference.explain import explain_run
    from engine.models.chexnet import build_model

    model = build_model("tinynet")
    assert model.head.out_features == 14
    run_dir = tmp_path / "toy-run"
    events = train_in_process(tiny_config(tiny_demo, model={"arch": "tinynet", "pretrained": "none"}), run_dir)
    exported = next(e for e in events if e["type"] == "exported")
    assert {a["kind"] for a in exported["artifacts"]} == {"fp32"}
    test = next(e for e in events if e["type"] == "evaluated" and e["split"] == "test")
    res = evaluate_run(run_dir, str(tiny_demo), "test")
    assert res["models"][0]["auc_mean"] == pytest.approx(test["auc_mean"], abs=1e-6)
    images = sorted((tiny_demo / "images").glob("*.png"))[:2]
    out = explain_run(run_dir, [str(p) for p in images], tmp_path / "explain", "top3")
    assert len(out["records"]) == 2 * 3 and not out["skipped"]


class ClipState:
    """A toy method's checkpoint part: how many steps it has clipped."""

    def __init__(self) -> None:
        self.steps = 0

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


@pytest.fixture()
def weight_clipping():
    """A compression method written in this file alone: its config section, and hooks that clip every
    convolution weight to [-max_abs, max_abs] after each optimizer step."""
    from engine import compression

    config.add_section(
        "clip",
        {"enabled": config.Field(False, bool), "max_abs": config.Field(0.05, config.NUM)},
        label=lambda cfg: f"clip{cfg['clip']['max_abs']:g}" if cfg["clip"]["enabled"] else None,
    )

    @compression.register
    class WeightClipping(compression.Method):
        name, enabled_by = "clip", "clip.enabled"

        def __init__(self, model: nn.Module, ctx: compression.MethodContext) -> None:
            super().__init__(model, ctx)
            self.max_abs, self.state = self.cfg["max_abs"], ClipState()
            self.convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]

        def parts(self) -> dict:
            return {"clip": self.state}

        @torch.no_grad()
        def after_step(self, global_step: int) -> None:
            for m in self.convs:
                m.weight.clamp_(-self.max_abs, self.max_abs)
            self.state.steps += 1

        def epoch_fields(self) -> dict:
            return {"max_abs_weight": max(float(m.weight.detach().abs().max()) for m in self.convs)}

        def exported_fields(self) -> dict:
            return {"clipped_steps": self.state.steps}

    yield WeightClipping
    compression.unregister("clip")
    config.remove_section("clip")


def test_a_registered_compression_method_trains_exports_and_evaluates(weight_clipping, tinynet, tmp_path, tiny_demo):
    """The toy method and the toy architecture together, through a tiny run, its export and `eval`."""
    from engine.evaluation.evaluate import evaluate_run
    from engine.training import checkpoint

    with pytest.raises(ConfigError, match="clip.max_abs"):
        config.validate({"clip": {"max_abs": "big"}}, "p.toml")
    cfg = tiny_config(
        tiny_demo, model={"arch": "tinynet", "pretrained": "none"}, clip={"enabled": True, "max_abs": 0.05}
    )
    run_dir = tmp_path / "clipped-run"
    events = train_in_process(cfg, run_dir)
    epochs = [e for e in events if e["type"] == "epoch_ended"]
    assert len(epochs) == 2 and all(e["max_abs_weight"] <= 0.05 + 1e-7 for e in epochs)
    last = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    exported = next(e for e in events if e["type"] == "exported")
    assert last["clip"]["steps"] == exported["clipped_steps"] == last["state"]["global_step"] > 0
    shipped = checkpoint.load(run_dir / "export" / "model_fp32.pt")["model"]
    assert max(float(shipped[k].abs().max()) for k in ("body.0.weight", "body.3.weight")) <= 0.05 + 1e-7
    test = next(e for e in events if e["type"] == "evaluated" and e["split"] == "test")
    assert evaluate_run(run_dir, str(tiny_demo), "test")["models"][0]["auc_mean"] == pytest.approx(
        test["auc_mean"], abs=1e-6
    )
    # chexui's tables name the run's compression in the method's own words (and nothing for a run without it)
    from chexui.format import compression_text
    from chexui.runs import load_run

    assert compression_text(load_run(run_dir).state.config) == "clip0.05"
    assert compression_text(config.validate({"clip": {"max_abs": 0.1}}, "p.toml")) == "dense"
