"""Gradual magnitude pruning: the schedule, achieved sparsity, adaptive per-layer targets, resume, DDP."""

from __future__ import annotations

import json

import pytest
import torch

from engine.prune import Pruner, schedule
from tests.conftest import chexui, events_of, only_run


def test_schedule_is_polynomial_from_initial_to_final():
    t0, t1 = 50, 700
    assert schedule(0, t0, t1, 0.1, 0.7, 3) == 0.0
    assert schedule(t0, t0, t1, 0.1, 0.7, 3) == pytest.approx(0.1)
    mid = (t0 + t1) // 2
    assert schedule(mid, t0, t1, 0.1, 0.7, 3) == pytest.approx(0.7 + (0.1 - 0.7) * (1 - (mid - t0) / (t1 - t0)) ** 3)
    assert schedule(t1, t0, t1, 0.1, 0.7, 3) == schedule(10 * t1, t0, t1, 0.1, 0.7, 3) == 0.7
    values = [schedule(t, t0, t1, 0.1, 0.7, 3) for t in range(t0, t1 + 1)]
    assert values == sorted(values)


def test_conv_scope_leaves_batchnorm_biases_and_classifier():
    from engine.models import build_model
    model = build_model("resnet18", "none")
    cfg = {"scope": "conv", "adaptive": [{"out_channels": 64, "sparsity": 0.25}], "final_sparsity": 0.7,
           "initial_sparsity": 0.1, "begin_epoch": 0.0, "end_epoch": 1.0, "power": 3, "frequency_steps": 1}
    p = Pruner(model, cfg, steps_per_epoch=4)
    assert all(isinstance(m, torch.nn.Conv2d) for m in p.layers.values()) and "fc" not in p.layers
    for step in range(1, 6):
        p.step(step)
    assert model.fc.weight.ne(0).all() and model.bn1.weight.ne(0).all()
    for name, info in p.layer_sparsity().items():
        want = 0.25 if info["out_channels"] == 64 else 0.7
        assert abs(info["sparsity"] - want) <= 0.005, (name, info)
    assert Pruner(model, {**cfg, "scope": "all"}, 4).layers.keys() >= {"fc"}


PRUNE70 = ["--set", "prune.enabled=true", "--set", "prune.final_sparsity=0.7", "--set", "prune.begin_epoch=0.5",
           "--set", "prune.end_epoch=2.0", "--set", "prune.frequency_steps=2", "--set", "train.epochs=3"]


def sparsities(run_dir):
    return {e["epoch"]: e["sparsity"] for e in events_of(run_dir) if e["type"] == "epoch_ended"}


@pytest.mark.slow
def test_prune70_shortened_and_adaptive_targets_under_two_processes(tmp_path, tiny_preset):
    runs = tmp_path / "runs"
    adaptive = 'prune.adaptive=[{out_channels=64, sparsity=0.25}, {out_channels=128, sparsity=0.5}]'
    r = chexui("run", "--headless", "--preset", tiny_preset, *PRUNE70, "--set", adaptive, "--nproc", 2,
               "--runs-dir", runs)
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(runs)
    assert [e for e in events_of(run) if e["type"] == "run_started"][0]["world_size"] == 2
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert set(ck["prune"]["masks"]) and ck["prune"]["last_update"] > 0
    s = sparsities(run)
    layers = json.loads((run / "prune_layers.json").read_text())
    for epoch in ("2", "3"):
        for name, info in layers[epoch].items():
            want = {64: 0.25, 128: 0.5}.get(info["out_channels"], 0.7)
            assert abs(info["sparsity"] - want) <= 0.005, (epoch, name, info)
    assert 0 < s[1] < s[2]
    # without adaptive targets: global sparsity at and after end_epoch is 0.70
    runs2 = tmp_path / "runs2"
    assert chexui("run", "--headless", "--preset", tiny_preset, *PRUNE70, "--runs-dir", runs2).returncode == 0
    s = sparsities(only_run(runs2))
    assert abs(s[2] - 0.70) <= 0.005 and abs(s[3] - 0.70) <= 0.005 and s[1] < 0.7
