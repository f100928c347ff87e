"""Engine: the headless demo path, DDP correctness, exact resume, failures (a killed worker's restart: test_faults)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.evaluation.metrics import per_class_auroc
from engine.events import EVENT_FIELDS, final_status
from engine.labels import LABELS
from tests.conftest import PRUNE70, chexui, chexui_bg, events_of, nih_sample, only_run, wait_for_event

pytestmark = pytest.mark.slow


def of_type(events, t):
    return [e for e in events if e["type"] == t]


def test_ddp_two_processes_equal_one_process_double_batch(tmp_path, tiny_demo):
    _torchrun(1, "--data", tiny_demo, "--batch", 16, "--steps", 4, "--out", tmp_path / "w1.pt")
    _torchrun(
        2,
        "--data",
        tiny_demo,
        "--batch",
        8,
        "--steps",
        4,
        "--out",
        tmp_path / "w2.pt",
        "--eval-ckpt",
        tmp_path / "w1.pt",
    )
    one = torch.load(tmp_path / "w1.pt", weights_only=True)
    two = torch.load(tmp_path / "w2.pt", weights_only=True)
    assert one["world"] == 1 and two["world"] == 2
    diff = max((two["weights"][k].float() - one["weights"][k].float()).abs().max().item() for k in one["weights"])
    assert diff < 1e-5, f"2 processes x batch 8 vs 1 x batch 16: max weight difference {diff}"
    w0 = build_initial()  # the steps did move the weights: the equality above is not vacuous
    assert max((one["weights"][k].float() - w0[k].float()).abs().max().item() for k in w0) > 1e-4
    # AUROC over 2 ranks of the 1-process checkpoint equals its 1-rank AUROC exactly
    from engine.data import nih

    y = nih.index_dataset(tiny_demo).labels
    assert one["logits"].shape == (160, 14)
    assert per_class_auroc(y, two["ckpt_logits"].numpy()) == per_class_auroc(y, one["logits"].numpy())


def build_initial():
    from engine.models.chexnet import build_model

    torch.manual_seed(0)
    return build_model("resnet18", "none").state_dict()


def test_stopped_and_resumed_run_matches_uninterrupted(tmp_path, tiny_preset):
    """prune70 shortened (end_epoch 1.5 of 2) with QAT on: global sparsity 0.70 after end_epoch;
    stopped mid-run and resumed == uninterrupted: losses, test AUROC, the sparsity curve (the stop lands
    mid-schedule) and the fake-quant observers."""
    short = ["--set", "train.epochs=2", "--set", "prune.end_epoch=1.5"]
    common = ["--preset", tiny_preset, *PRUNE70, *short, "--set", "quantize.enabled=true", "--headless"]
    ref_runs, runs = tmp_path / "ref", tmp_path / "runs"
    # the uninterrupted run side by side with the stopped one, one CPU thread each (two runs with two
    # threads each on two cores thrash: an epoch took 57 s instead of about 3 s)
    one = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = chexui_bg("run", *common, "--runs-dir", ref_runs, env=one)
    proc = chexui_bg("run", *common, "--runs-dir", runs, env=one)
    try:
        run_dir, _ = wait_for_event(runs, lambda e: e["type"] == "epoch_ended" and e["epoch"] == 1)
        r = chexui("stop", run_dir.name, "--runs-dir", runs)
        assert r.returncode == 0, r.stderr
        proc.communicate(timeout=120)
        ev = events_of(run_dir)
        assert final_status(ev) == "stopped"
        stopped_at = of_type(ev, "epoch_ended")[-1]["epoch"]
        assert stopped_at < 2, "the stop landed after the run had finished; nothing was resumed"
        # resumed while the reference still runs (the two side by side again)
        r = chexui("run", "--resume", run_dir.name, "--runs-dir", runs, "--headless", env=one)
        assert r.returncode == 0, r.stdout + r.stderr
        ref.communicate(timeout=120)
    finally:
        proc.kill()
        ref.kill()
    assert ref.returncode == 0
    ev = events_of(run_dir)
    assert final_status(ev) == "completed" and of_type(ev, "restarted")
    ref = events_of(only_run(ref_runs))
    s = {e["epoch"]: e["sparsity"] for e in of_type(ref, "epoch_ended")}
    assert s[1] < 0.7 and abs(s[2] - 0.70) <= 0.005
    got_epochs = {e["epoch"]: e for e in of_type(ev, "epoch_ended")}
    for e in of_type(ref, "epoch_ended"):
        g = got_epochs[e["epoch"]]
        assert abs(g["val_loss"] - e["val_loss"]) <= 1e-6 and abs(g["train_loss"] - e["train_loss"]) <= 1e-6
        assert g["sparsity"] == e["sparsity"]
    t_ref, t_got = of_type(ref, "evaluated")[-1], of_type(ev, "evaluated")[-1]
    assert t_ref["split"] == t_got["split"] == "test"
    for name in LABELS:
        if t_ref["auc"][name] is None:
            assert t_got["auc"][name] is None
        else:
            assert abs(t_got["auc"][name] - t_ref["auc"][name]) <= 1e-6


def test_corrupt_image_during_training_fails_cleanly(tmp_path, tiny_preset, tiny_demo):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_demo, data)
    runs = tmp_path / "runs"
    proc = chexui_bg(
        "run",
        "--headless",
        "--preset",
        tiny_preset,
        "--data",
        data,
        "--runs-dir",
        runs,
        "--set",
        "data.cache=false",
        "--set",
        "data.workers=1",
        "--set",
        "train.epochs=3",
    )
    try:
        run_dir, _ = wait_for_event(runs, lambda e: e["type"] == "checkpoint_saved" and e["epoch"] == 1)
        victim = json.loads((run_dir / "split.json").read_text())["train"][0]
        p = data / "images" / victim
        p.write_bytes(p.read_bytes()[:100])
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 2, out  # bad data: exit 2, as for any data error
    ev = events_of(run_dir)
    errors = of_type(ev, "error")
    # a DataLoader worker re-raises with the traceback as the message: the user sees one line
    assert errors and victim in errors[0]["message"] and "Traceback" not in errors[0]["message"]
    assert "Traceback" not in out
    assert final_status(ev) == "failed"
    ck = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ck["state"]["epoch"] >= 1


def test_bad_config_exits_2_naming_the_key(tmp_path):
    r = chexui("run", "--headless", "--set", "train.lrr=0.1", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "train.lrr" in r.stderr and "did you mean 'lr'" in r.stderr
    r = chexui("run", "--headless", "--set", "train.batch_size=0", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "train.batch_size" in r.stderr and ">= 1" in r.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_real_nih_sample_run(tmp_path):
    root = nih_sample()
    runs = tmp_path / "runs"
    r = chexui(
        "run",
        "--headless",
        "--data",
        root,
        "--set",
        "data.image_size=32",
        "--set",
        "model.arch=resnet18",
        "--set",
        "model.pretrained=none",
        "--set",
        "train.epochs=1",
        "--set",
        "data.workers=0",
        "--runs-dir",
        runs,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    test = [e for e in events_of(only_run(runs)) if e["type"] == "evaluated"][0]
    assert set(test["auc"]) == set(LABELS) and test["n"] > 50
    assert "test AUROC" in r.stdout


def test_imagenet_weights_offline_message():
    from torchvision import models

    from engine.errors import ConfigError
    from engine.models.chexnet import build_model

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(models.ResNet18_Weights.DEFAULT.url).name
    if cached.exists():
        pytest.skip(f"ImageNet weights are cached at {cached}: the offline path cannot be exercised")
    try:
        build_model("resnet18", "imagenet")
    except ConfigError as e:
        msg = str(e)
        assert "pretrained" in msg and '"none"' in msg and str(cached) in msg
    else:
        pytest.skip("this machine could download the ImageNet weights (online)")


# last in the file: the shared 2-process run is made by the process that runs test_cli.py first (pytest -n);
# this one, which starts with test_study.py, would otherwise wait for it idle
def test_headless_run_two_processes(compressed_run):
    run, r = compressed_run  # 2 processes (with pruning and QAT on; see conftest)
    ev = events_of(run)
    for e in ev:
        assert e["v"] == 1 and isinstance(e["ts"], float) and all(f in e for f in EVENT_FIELDS[e["type"]])
    started = of_type(ev, "run_started")[0]
    assert started["world_size"] == 2 and started["dataset"]["n_train"] > 0
    assert started["channels_last"] is True  # pruning + QAT + export on channels_last weights, as on CUDA
    assert started["dataset"]["split_sha256"] == json.loads((run / "split.json").read_text())["sha256"]
    ends = of_type(ev, "epoch_ended")
    assert [e["epoch"] for e in ends] == [1, 2, 3]
    assert all(len(e["memory_mb"]) == 2 and min(e["memory_mb"]) > 0 for e in ends)
    # lr_scale = "linear": the LR is multiplied by the number of processes
    assert ends[0]["lr"] == pytest.approx(0.001 * 2)
    test = [e for e in ev if e["type"] == "evaluated" and e["split"] == "test"][0]
    assert set(test["auc"]) == set(LABELS) and test["n"] == started["dataset"]["n_test"]
    assert final_status(ev) == "completed"
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert "test AUROC" in r.stdout and "Hernia" in r.stdout and "\x1b[" not in r.stdout


def _torchrun(nproc: int, *args) -> None:
    """tests/ddp_helper.py on `nproc` processes under torchrun; one process runs it directly (no process
    group either way: WORLD_SIZE 1), without an agent to start."""
    torchrun = ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--nnodes", "1"]
    torchrun += ["--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]
    helper = [str(Path(__file__).parent / "ddp_helper.py"), *map(str, args)]
    cmd = [sys.executable, *(torchrun if nproc > 1 else []), *helper]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
