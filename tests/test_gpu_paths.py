"""The code paths that differ on CUDA, exercised on the CPU: channels_last weights, autocast (bf16, and
fp16 with its GradScaler), fused Adam, torch.compile, the step's loss read without waiting, the
prefetched loader, rank-0 buffers before evaluation, one best model on every rank, and the GPU
utilisation each rank reports (NVML, replaced by a stand-in reader)."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from chexui.headless import epoch_line
from engine import config
from engine.compression.prune import Pruner
from engine.data.batches import Prefetched
from engine.models.chexnet import WeightedBCE, build_model
from engine.training.loop import Utilisation, train_step
from engine.training.running_loss import RunningLoss
from tests.conftest import chexui, events_of, only_run, prune_schedule, run_tiny
from tests.toy import tiny_config, train_in_process

PRUNE = prune_schedule()


@pytest.mark.slow
def test_pruning_channels_last_weights_gives_the_same_masks_as_contiguous():
    """CUDA runs keep conv weights channels_last; torch's L1 mask used .view(-1), which they refuse."""
    torch.manual_seed(0)
    dense = build_model("resnet18", "none")
    cl = build_model("resnet18", "none")
    cl.load_state_dict(dense.state_dict())
    cl = cl.to(memory_format=torch.channels_last)
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last) and not cl.conv1.weight.is_contiguous()
    p_dense, p_cl = Pruner(dense, PRUNE, steps_per_epoch=4), Pruner(cl, PRUNE, steps_per_epoch=4)
    for step in range(1, 6):
        p_dense.step(step)
        p_cl.step(step)
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # the layout is kept
    for name in p_dense.masks:
        assert torch.equal(p_dense.masks[name], p_cl.masks[name]), name
    for name, info in p_cl.layer_sparsity().items():
        assert abs(info["sparsity"] - (0.25 if info["out_channels"] == 64 else 0.7)) <= 0.005, (name, info)


def _fp16_step(scaled: bool) -> torch.Tensor:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 14))
    # the study's weighting gives rare-label negatives tiny weights; here every weight is tiny
    loss_fn = WeightedBCE(pos=[1e-6] * 14, neg=[1.0] * 14)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=scaled)
    before = net[0].weight.detach().clone()
    x, y = torch.randn(8, 16), torch.zeros(8, 14)
    train_step(net, loss_fn, opt, scaler, torch.autocast("cpu", dtype=torch.float16), x, y)
    return (net[0].weight.detach() - before).abs().max()


def test_fp16_gradients_underflow_without_the_scaler_and_not_with_it():
    assert _fp16_step(scaled=False) == 0.0, "the fp16 gradients of tiny losses should underflow to zero"
    assert _fp16_step(scaled=True) > 0.0, "with loss scaling the first layer must learn"


def test_running_loss_sums_every_step_and_shows_the_last_landed_snapshot():
    losses = RunningLoss(torch.device("cpu"), every=3)
    for v in range(1, 8):
        losses.add(torch.tensor(float(v)))
        if v == 2:
            assert losses.latest() is None  # no snapshot before the third step
    assert losses.latest() == (6.0, 21.0, 6)  # the last snapshot: step 6's loss, steps 1-6 summed
    assert losses.total() == (28.0, 7) and losses.finite()
    losses.add(torch.tensor(math.nan))
    losses.add(torch.tensor(1.0))
    assert not losses.finite(), "a non-finite loss between snapshots must show in the next one"


def test_prefetched_batches_come_in_order_and_errors_reach_the_consumer():
    assert list(Prefetched(range(50), torch.device("cpu"))) == list(range(50))

    def broken():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(Prefetched(broken(), torch.device("cpu")))
    # leaving early (a stop request mid-epoch) ends the thread
    before = threading.active_count()
    with Prefetched(iter(range(10**9)), torch.device("cpu")) as it:
        assert next(iter(it)) == 0
    assert threading.active_count() == before


GPU_CONFIG = {"train": {"amp": "bf16", "epochs": 1, "compile": True}, "eval": {"bootstrap_resamples": 0}}


def test_the_gpu_configuration_runs_on_cpu(tmp_path, tinynet, tiny_demo):
    """What a GPU server runs: bf16 autocast, channels_last, fused Adam and torch.compile (train step and
    the padded evaluation pass), with the compile time reported apart from the epoch's. The engine's own
    entry point in this process, on tests/toy.py's two-conv network: the same code as a real network's,
    in 21.5 s with Inductor's cache cold instead of ResNet18's 55.6 s under torchrun (that one: the
    --full-matrix test below)."""
    from engine.evaluation.evaluate import evaluate_run

    cfg = tiny_config(tiny_demo, model={"arch": tinynet, "pretrained": "none"}, export={"enabled": False}, **GPU_CONFIG)
    run = tmp_path / "compiled"
    ev = train_in_process(cfg, run)
    started = [e for e in ev if e["type"] == "run_started"][0]
    assert started["amp"] == "bfloat16" and started["channels_last"] is True
    ended = [e for e in ev if e["type"] == "epoch_ended"][0]
    assert ended["train_loss"] > 0 and ended["val_loss"] > 0
    assert 0 < ended["compile_s"] < ended["epoch_time_s"]
    assert f"(compile {ended['compile_s']:.1f}s)" in epoch_line(ended)  # the monitor says why epoch 1 is slow
    opt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert opt["param_groups"][0]["fused"] is True
    # trained in bf16, validated and tested in fp32: the run's test AUROCs are an fp32 evaluation's
    # (chexui eval's, eager) to rounding, where bf16 autocast had moved them by up to 4e-4
    test = [e for e in ev if e["type"] == "evaluated" and e["split"] == "test"][0]
    fp32 = evaluate_run(run, str(tiny_demo))
    assert max(abs(fp32["auc"][k] - v) for k, v in test["auc"].items() if v is not None) <= 2e-6


@pytest.mark.slow
def test_the_gpu_configuration_runs_a_real_network_under_torchrun(tmp_path, tiny_preset, tiny_demo, full_matrix):
    """The same on ResNet18 through `chexui run --headless` (about a minute on 2 cores with Inductor's
    cache cold, most of it compiling: with --full-matrix)."""
    sets = [f"{s}.{k}={str(v).lower()}" for s, keys in GPU_CONFIG.items() for k, v in keys.items()]
    r, ev = run_tiny(tmp_path / "runs", tiny_preset, *sets)
    assert r.returncode == 0, r.stdout + r.stderr
    started = [e for e in ev if e["type"] == "run_started"][0]
    assert started["amp"] == "bfloat16" and started["channels_last"] is True
    ended = [e for e in ev if e["type"] == "epoch_ended"][0]
    assert 0 < ended["compile_s"] < ended["epoch_time_s"]
    assert f"(compile {ended['compile_s']:.1f}s)" in r.stdout
    assert [e for e in ev if e["type"] == "run_finished"][-1]["status"] == "completed"
    opt = torch.load(only_run(tmp_path / "runs") / "checkpoints" / "last.pt", weights_only=True)["optimizer"]
    assert opt["param_groups"][0]["fused"] is True


@pytest.mark.slow
def test_two_process_test_auroc_is_the_saved_best_model(tmp_path, tiny_preset, tiny_demo):
    """The last epoch is the best one (1 epoch): the 2-process test AUROC must be the AUROC of best.pt
    evaluated by one process - no rank may read a half-written best.pt or use its own BatchNorm stats."""
    runs = tmp_path / "runs"
    r = chexui(
        "run", "--headless", "--preset", tiny_preset, "--nproc", 2, "--set", "train.epochs=1", "--runs-dir", runs
    )
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(runs)
    ev = events_of(run)
    assert [e for e in ev if e["type"] == "run_finished"][-1]["best_epoch"] == 1
    test = [e for e in ev if e["type"] == "evaluated" and e["split"] == "test"][0]
    r = chexui("eval", str(run), "--data", tiny_demo, "--json")
    assert r.returncode == 0, r.stderr
    one = json.loads(r.stdout)
    assert one["n"] == test["n"]
    for label, auc in test["auc"].items():
        if auc is None:
            assert one["auc"][label] is None
        else:
            assert abs(one["auc"][label] - auc) <= 1e-6, (label, auc, one["auc"][label])
    # and the validation that chose it measured that very model (every rank used rank 0's BatchNorm stats)
    from engine.data import nih
    from engine.data.batches import Images
    from engine.evaluation.evaluate import auroc_from_logits, load_best, predict_logits
    from engine.runtime.dist import Dist

    model, cfg = load_best(run)
    index = nih.index_dataset(tiny_demo)
    val = nih.make_split(index, config.load_run_config(run / "config.toml")["data"])["val"]
    logits = predict_logits(model, Images(index, 32), val, Dist(), batch_size=64)
    val_auc = auroc_from_logits(index.labels[val], logits)[0]
    recorded = [e for e in ev if e["type"] == "epoch_ended"][0]["val_auc"]
    for label, auc in recorded.items():
        assert (auc is None and val_auc[label] is None) or abs(val_auc[label] - auc) <= 1e-6, label


def test_gpu_inference_figures_are_measured_on_any_device():
    """`chexui bench`'s GPU columns (fp32 and bf16 autocast, batch 1 and a large batch, channels_last),
    here on the CPU: the same code a GPU server runs."""
    from engine.inference.bench import measure_gpu

    g = measure_gpu(build_model("resnet18", "none").eval(), 32, torch.device("cpu"), batch=4, budget_s=0.05)
    assert set(g) == {"batch", "latency_b1_ms", "throughput", "bf16_latency_b1_ms", "bf16_throughput"}
    assert g["batch"] == 4 and all(v > 0 for v in g.values())


def test_autocast_follows_the_device_and_stays_off_under_qat():
    """The autocast decision of a run (bf16 on CUDA by default; fp32 for QAT, whose observers calibrate on
    fp32 activations: the compression method says so, engine/compression/qat.py)."""
    from engine.training.trainer import amp_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    dense = config.defaults()
    assert amp_dtype(dense, cuda) is torch.bfloat16 and amp_dtype(dense, cpu) is None  # "auto"
    bf16 = config.merge(dense, {"train": {"amp": "bf16"}})
    assert amp_dtype(bf16, cpu) is torch.bfloat16  # honoured on the CPU: the suite runs the autocast path
    assert amp_dtype(config.merge(bf16, {"quantize": {"enabled": True}}), cpu) is None
    assert amp_dtype(config.merge(dense, {"quantize": {"enabled": True}}), cuda) is None
    assert amp_dtype(config.merge(bf16, {"prune": {"enabled": True}}), cpu) is torch.bfloat16


def test_gpu_utilisation_is_the_mean_of_samples_taken_every_half_second_and_none_without_nvml():
    readings = iter([90.0, 70.0, 50.0])
    util = Utilisation(torch.device("cuda"), every_s=0.5, read=lambda: next(readings))
    for now in (0.0, 0.2, 0.6, 0.7, 1.2):  # sampled at 0.0, 0.6 and 1.2 only
        util.sample(now)
    assert util.samples == [90.0, 70.0, 50.0] and util.mean() == 70.0

    def no_nvml() -> float:
        raise ModuleNotFoundError("pynvml")

    broken = Utilisation(torch.device("cuda"), read=no_nvml)
    broken.sample(0.0)
    broken.sample(1.0)  # (after the first failure it stops asking)
    assert broken.mean() is None and broken.read is None
    assert Utilisation(torch.device("cpu")).read is None  # the CPU: no figure, no NVML call
