"""Channel pruning (engine/compression/channels.py, channel_pruning.py) and distillation
(engine/training/distill.py) as functions: the smaller model computes what the masked one does, for
ResNet's blocks and DenseNet's concatenations; MACs targets; the schedule on every rank; resume."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from engine import config
from engine.compression import channels
from engine.compression.base import MethodContext
from engine.compression.channel_pruning import ChannelPruning, final_targets
from engine.inference.export import cost
from engine.models.chexnet import build_float, build_model
from engine.training.distill import Distiller
from tests.conftest import chexui


def _bn_statistics(model: nn.Module) -> nn.Module:
    """BatchNorms with running statistics and affine parameters away from their identity defaults (a
    masked channel that leaked through a BatchNorm's bias would then show)."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "densenet121"])
def test_the_smaller_model_computes_what_the_masked_model_does(arch):
    torch.manual_seed(0)
    model = _bn_statistics(build_model(arch, "none"))
    gs = channels.groups(model)
    # every group loses half its channels, by L1 importance
    removed = {g.producer: channels.choose(channels.magnitude(model, g, 1), g.width // 2, []) for g in gs}
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters())
    with torch.no_grad():
        for name, mask in channels.masks(masked, gs, removed).items():
            params[name].mul_(mask)
    slim = channels.slim(masked, gs, removed)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (masked(x) - slim(x)).abs().max() < 1e-4
        assert (model(x) - masked(x)).abs().max() > 1e-2  # (the channels did carry signal)
    # MACs: the analytic count over the groups == torch's flop counter on the smaller model
    sizes = channels.spatial_sizes(model, 224)
    dense, small = cost(model, 224), cost(slim, 224)
    assert channels.macs_after(model, sizes, {}, {}) == dense["macs"]
    assert channels.macs_after(model, sizes, *channels.removals(gs, removed)) == small["macs"]
    assert small["macs"] < 0.55 * dense["macs"] and small["params"] < 0.55 * dense["params"]
    # rebuilt from its layer sizes (data), the state dict loads strictly and gives the same outputs
    rebuilt = build_float(arch, slim.state_dict(), counts=channels.channel_counts(slim))
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), slim(x), atol=1e-5)


def test_densenet_growth_channels_reach_every_later_reader_at_their_offset():
    model = build_model("densenet121", "none")
    gs = {g.producer: g for g in channels.groups(model)}
    # the block's 2nd layer's growth channels sit after block 1's 64 input channels and layer 1's 32
    g = gs["features.denseblock1.denselayer2.conv2"]
    readers = dict(g.readers)
    assert readers["features.denseblock1.denselayer3.conv1"] == 64 + 32
    assert readers["features.transition1.conv"] == 64 + 32
    assert "features.denseblock1.denselayer1.conv1" not in readers  # (an earlier layer never reads it)
    last = gs["features.denseblock4.denselayer16.conv2"]
    assert dict(last.readers) == {"features.norm5": 1024 - 32, "classifier": 1024 - 32}


def test_target_macs_scales_the_targets_until_the_model_keeps_that_fraction():
    model = build_model("resnet50", "none")
    gs = channels.groups(model)
    cfg = config.validate(
        {"prune": {"enabled": True, "structure": "channel", "target_macs": 0.4}, "model": {"arch": "resnet50"}}
    )["prune"]
    sizes = channels.spatial_sizes(model, 128)
    final = final_targets(model, gs, cfg, sizes)
    removed = {g.producer: list(range(round(final[g.producer] * g.width))) for g in gs}
    kept = channels.macs_after(model, sizes, *channels.removals(gs, removed))
    ratio = kept / channels.macs_after(model, sizes, {}, {})
    assert abs(ratio - 0.4) < 0.01
    # a target the prunable groups cannot reach is a config error naming the key
    with pytest.raises(config.ConfigError, match="prune.target_macs = 0.05"):
        final_targets(model, gs, {**cfg, "target_macs": 0.05}, sizes)


def _method(model: nn.Module, **prune) -> ChannelPruning:
    cfg = config.validate(
        {
            "model": {"arch": "resnet18"},
            "data": {"image_size": 32},
            "train": {"epochs": 3},
            "prune": {"enabled": True, "structure": "channel", "begin_epoch": 0.5, "end_epoch": 2.0}
            | {"frequency_steps": 2, **prune},
        }
    )
    # 5 steps an epoch: masks from step 2 (epoch 0.5) every 2 steps to step 10 (epoch 2)
    return ChannelPruning(model, MethodContext(cfg, Path("."), 5, True, log=lambda _: None))


def _train_steps(model: nn.Module, method: ChannelPruning, opt: torch.optim.Optimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(step)  # each step's batch, whatever process runs it
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.rand(4, 14, generator=g)
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
        opt.step()
        method.after_step(step + 1)


def _fresh(importance: str) -> tuple[nn.Module, ChannelPruning, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = build_model("resnet18", "none")
    return model, _method(model, importance=importance), torch.optim.Adam(model.parameters(), lr=1e-2)


@pytest.mark.parametrize("importance", ["l2", "taylor"])
def test_gradual_schedule_removes_channels_for_good_and_a_resume_continues_it_exactly(importance):
    model, method, opt = _fresh(importance)
    seen, fractions = {}, []
    for k in range(12):
        _train_steps(model, method, opt, range(k, k + 1))
        fractions.append(method.fraction())
        for producer, idx in method.removed.items():
            assert set(seen.get(producer, ())) <= set(idx)  # a removed channel never comes back
        seen = {p: list(v) for p, v in method.removed.items()}
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and len(set(fractions)) > 3
    assert abs(fractions[-1] - 0.5) < 0.01  # the final target (prune.final_sparsity) after end_epoch
    named = dict(model.named_modules())
    for g in method.groups:  # removed channels are zero in the producer, its BatchNorm and every reader
        idx = method.removed[g.producer]
        assert named[g.producer].weight[idx].abs().max() == 0
        for norm in g.norms:
            assert named[norm].weight[idx].abs().max() == 0 and named[norm].bias[idx].abs().max() == 0
        for reader, offset in g.readers:
            assert named[reader].weight[:, [offset + i for i in idx]].abs().max() == 0

    # stopped mid-schedule (step 5: Taylor scores gathered since the last update) and resumed from the
    # checkpoint's parts in a fresh model == uninterrupted
    ref_model, ref, ref_opt = _fresh(importance)
    _train_steps(ref_model, ref, ref_opt, range(0, 8))
    first, meth, opt = _fresh(importance)
    _train_steps(first, meth, opt, range(0, 5))
    saved = copy.deepcopy({"model": first.state_dict(), "opt": opt.state_dict(), "method": meth.state_dict()})
    model, resumed, opt = _fresh(importance)
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    resumed.load_state_dict(saved["method"])
    _train_steps(model, resumed, opt, range(5, 8))
    assert resumed.removed == ref.removed and 0 < resumed.fraction() < 0.5
    for a, b in zip(model.parameters(), ref_model.parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_one_shot_pruning_masks_the_model_before_its_first_evaluation():
    torch.manual_seed(0)
    model = _bn_statistics(build_model("resnet18", "none"))
    before = copy.deepcopy(model)
    method = _method(model, schedule="one_shot", final_sparsity=0.3)
    method.begin(None)  # (l1: no gradients needed)
    assert method.fraction() == pytest.approx(0.3, abs=0.01)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # what epoch 0 validates is already the pruned model, and the smaller one equals it
        assert (model(x) - before(x)).abs().max() > 1e-3
        assert (model(x) - method.shipped(model)(x)).abs().max() < 1e-4


def test_distillation_term_pulls_the_student_towards_the_teacher_only():
    teacher = nn.Linear(3, 14)
    x, y = torch.randn(5, 3), torch.rand(5, 14).round()
    base = nn.functional.binary_cross_entropy_with_logits
    logits = teacher(x).detach().requires_grad_(True)
    # alpha 0: the plain loss
    assert torch.equal(Distiller(teacher, 0.0, 2.0)(base(logits, y), logits, x), base(logits, y))
    # alpha 1, a student equal to its teacher: the teacher term's gradient is zero at any temperature
    for t in (1.0, 4.0):
        loss = Distiller(teacher, 1.0, t)(base(logits, y), logits, x)
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad.abs().max() < 1e-6
    # a student away from the teacher is pulled towards it
    away = (teacher(x).detach() + 1.0).requires_grad_(True)
    (grad,) = torch.autograd.grad(Distiller(teacher, 1.0, 2.0)(base(away, y), away, x), away)
    assert (grad > 0).all()
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize(
    "args, said",
    [
        (["--set", "prune.structure=channel", "--set", "quantize.enabled=true"], "prune the channels first"),
        (["--set", "prune.target_macs=0.5"], "a MACs target is for channel pruning"),
        (["--set", "distill.enabled=true"], "only `chexui compress` runs have a parent"),
        (["--set", "prune.importance=fisher"], "'prune.importance' = 'fisher'"),
    ],
)
def test_channel_and_distill_keys_that_cannot_work_are_config_errors(tmp_path, args, said):
    r = chexui(
        "run", "--headless", "--set", "prune.enabled=true", "--set", "prune.end_epoch=2", *args, "--runs-dir", tmp_path
    )
    assert r.returncode == 2 and said in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())  # nothing started
