"""Post-training compression (`chexui compress`): one-shot pruning with a masked fine-tune and PTQ, as
new runs that record their parent, side by side with training-time compression in `compare`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from engine import config
from engine.compression.prune import Pruner
from engine.evaluation import predictions
from engine.models.chexnet import build_model
from tests.conftest import TINY_PRESET, chexui, events_of, isolated_env, only_run, wait_for_event

# quicker runs: fewer bootstrap resamples (the intervals are not the subject here)
QUICK = ["--set", "eval.bootstrap_resamples=100"]


def test_one_shot_pruning_reaches_every_target_at_step_0_and_holds_it():
    torch.manual_seed(0)
    model = build_model("resnet18", "none")
    cfg = {
        **config.defaults()["prune"],
        "enabled": True,
        "schedule": "one_shot",
        "final_sparsity": 0.7,
        "adaptive": [{"out_channels": 64, "sparsity": 0.25}],
        "adaptive_default": "final",
    }
    p = Pruner(model, cfg, steps_per_epoch=4)
    p.step(0)
    for name, info in p.layer_sparsity().items():
        assert abs(info["sparsity"] - (0.25 if info["out_channels"] == 64 else 0.7)) <= 0.005, name
    masks = {k: v.clone() for k, v in p.masks.items()}
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(torch.randn_like(prm))  # what an optimizer step does to pruned weights
    p.step(7)  # after any later step: the same masks, re-applied
    assert all(torch.equal(masks[k], p.masks[k]) for k in masks)
    assert all(abs(i["sparsity"] - i["target"]) <= 0.005 for i in p.layer_sparsity().values())


@pytest.fixture(scope="module")
def post_training(tmp_path_factory, tiny_demo):
    """A finished baseline, then three `chexui compress` runs of it side by side (so their start-up
    overlaps): --prune 0.7 --finetune-epochs 30, which is stopped after its first epoch and resumed to end
    at epoch 2, --ptq, and --prune-channels 0.5 with a distilled 1-epoch fine-tune on 2 processes.
    Returns (runs dir, {"baseline" | "prune" | "ptq" | "channel": run dir, "resume_output": the
    resume's stdout})."""
    base = tmp_path_factory.mktemp("post-training")
    preset = base / "tiny.toml"
    preset.write_text(TINY_PRESET.format(desc="baseline", root=tiny_demo, epochs=2))
    env = {**os.environ, **isolated_env(tmp_path_factory.getbasetemp())}
    env.pop("CHEXUI_PRESETS", None)
    runs = base / "runs"
    r = chexui("run", "--headless", "--preset", preset, "--name", "baseline", *QUICK, "--runs-dir", runs, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out: dict = {"baseline": only_run(runs)}
    for key, args in (
        ("prune", ["--prune", "0.7", "--finetune-epochs", "30", "--name", "prune"]),
        # bf16 autocast on: the int8 model must still be measured as a user runs it (the
        # `chexui eval` check below), and the CPU suite runs the autocast path
        ("ptq", ["--ptq", "--name", "ptq", "--set", "train.amp=bf16"]),
        # half the channels (by Taylor scores, compress's default) on 2 ranks, a fine-tune distilled from
        # the parent (the teacher inside the step's bf16 autocast, as on a GPU)
        (
            "channel",
            ["--prune-channels", "0.5", "--finetune-epochs", "1", "--distill", "--nproc", "2", "--name", "channel"]
            + ["--set", "train.amp=bf16"],
        ),
    ):
        # runs side by side on a 2-core machine: one thread each (with two each, the OpenMP pools
        # thrash: two concurrent tiny QAT runs took 57 s for an epoch that takes about 3 s alone)
        r = chexui(
            "compress", "baseline", *args, "--detach", *QUICK, "--runs-dir", runs, env={**env, "OMP_NUM_THREADS": "1"}
        )
        assert r.returncode == 0, r.stdout + r.stderr
        out[key] = next(d for d in runs.iterdir() if d.name.endswith(f"-{key}"))
    wait_for_event(out["prune"], lambda e: e["type"] == "epoch_ended")
    r = chexui("stop", str(out["prune"]), "--runs-dir", runs, env=env)
    assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
    r = chexui(
        "run", "--resume", out["prune"].name, "--headless", "--set", "train.epochs=2", "--runs-dir", runs, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out["resume_output"] = r.stdout
    for key in ("ptq", "channel"):
        wait_for_event(out[key], lambda e: e["type"] == "run_finished", timeout=180)
    return runs, out


def _finished(run: Path) -> dict:
    return [e for e in events_of(run) if e["type"] == "run_finished"][-1]


def _artifacts(run: Path) -> dict[str, dict]:
    return {a["kind"]: a for a in [e for e in events_of(run) if e["type"] == "exported"][-1]["artifacts"]}


def _probs(run: Path, split: str) -> np.ndarray:
    return predictions.load(run / "predictions" / f"{split}.npz")["probs"]


@pytest.mark.slow
def test_compress_prune_finetune_is_a_run_with_its_parent_and_the_target_sparsity(post_training):
    _, runs = post_training
    run, parent = runs["prune"], runs["baseline"]
    ev = events_of(run)
    started = [e for e in ev if e["type"] == "run_started"][0]
    assert started["parent"]["run_id"] == parent.name and started["parent"]["path"] == str(parent.resolve())
    assert started["parent"]["split_sha256"] == started["dataset"]["split_sha256"]
    assert started["config"]["compress"]["parent"] == str(parent.resolve())
    assert started["config"]["prune"]["schedule"] == "one_shot" and started["config"]["train"]["epochs"] == 30
    epochs = [e for e in ev if e["type"] == "epoch_ended"]
    assert all(abs(e["sparsity"] - 0.7) <= 0.005 for e in epochs)  # held through the fine-tune
    assert _finished(run)["status"] == "completed"
    arts = _artifacts(run)
    assert {"fp32", "sparse", "onnx_fp32"} <= set(arts) and arts["sparse"]["bytes"] < 0.45 * arts["fp32"]["bytes"]
    layers = json.loads((run / "prune_layers.json").read_text())
    assert set(layers) >= {"0", "1"} and all(abs(v["sparsity"] - 0.7) <= 0.005 for v in layers["1"].values())
    evals = {e["split"] for e in ev if e["type"] == "evaluated"}
    assert {"test", "test_sparse", "test_onnx_fp32"} <= evals
    assert np.abs(_probs(run, "test_onnx_fp32") - _probs(run, "test")).max() < 1e-4
    shown = chexui("watch", str(run), "--headless").stdout
    assert f"compressing the best model (epoch {_finished(parent)['best_epoch']}) of run {parent.name}" in shown
    # the parent is untouched: same events, same best checkpoint
    assert (parent / "checkpoints" / "best.pt").is_file() and _finished(parent)["status"] == "completed"


@pytest.mark.slow
def test_compress_ptq_ships_int8_and_onnx_int8_calibrated_on_training_images(post_training, tiny_demo):
    _, runs = post_training
    run = runs["ptq"]
    arts = _artifacts(run)
    assert arts["int8"]["path"] == "export/model_int8.pt2" and arts["onnx_int8"]["path"] == "export/model_int8.onnx"
    for kind in ("int8", "onnx_int8"):
        assert arts[kind]["bytes"] <= 0.30 * arts["fp32"]["bytes"], kind
    evals = {e["split"]: e for e in events_of(run) if e["type"] == "evaluated"}
    assert {"test", "test_fp32", "test_onnx_fp32", "test_onnx_int8"} <= set(evals) and "test_int8" not in evals
    # `test` is the int8 model the run made: the graph of its .pt2, which gives the same numbers (no second
    # evaluation of one graph: test_compression checks the .pt2 against the kept predictions)
    # ONNX int8 runs the same int8 graph in onnxruntime's kernels (their rounding differs a little)
    assert np.abs(_probs(run, "test_onnx_int8") - _probs(run, "test")).mean() < 0.01
    assert abs(evals["test_onnx_int8"]["auc_mean"] - evals["test"]["auc_mean"]) <= 0.02
    assert np.abs(_probs(run, "test_onnx_fp32") - _probs(run, "test_fp32")).max() < 1e-4
    # the float model it quantized is the parent's best, unchanged
    assert np.abs(_probs(run, "test_fp32") - _probs(runs["baseline"], "test")).max() < 1e-6
    log = (run / "logs" / "engine.log").read_text()
    assert "post-training int8 (all): calibrated on" in log and "training images" in log
    assert [e for e in events_of(run) if e["type"] == "epoch_ended"] == []
    # `chexui eval` measures what the run ships: the int8 artifact first, then the float model it quantized
    r = chexui("eval", str(run), "--data", tiny_demo, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [m["model"].split(" ")[0] for m in res["models"]] == ["int8", "fp32"]
    assert res["auc_mean"] == pytest.approx(evals["test"]["auc_mean"], abs=1e-9)


@pytest.mark.slow
def test_compare_puts_post_training_rows_beside_training_time_ones(post_training, compressed_run):
    runs_dir, runs = post_training
    qat_prune, _ = compressed_run  # training-time adaptive pruning + QAT, 2 processes, same tiny data
    refs = [str(runs[k]) for k in ("baseline", "prune", "ptq")] + [str(qat_prune)]
    r = chexui("compare", *refs, "--format", "json", "--heatmaps", "4", "--runs-dir", runs_dir)
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    labels = list(t["time"])
    # Grad-CAM agreement with the baseline on 4 of its test images, 3 labels each: what each run ships
    # (the fine-tuned sparse model; the QAT run's int8 twin), its AUROC difference, and the pointing game
    heat = {(row["run"], row["model"]): row for row in t["heatmaps"]["rows"]}
    assert list(heat) == [(labels[0], "baseline"), (labels[1], "sparse"), (labels[3], "int8 (QAT twin)")]
    assert any(n.startswith(f"{labels[2]}: not compared: post-training int8") for n in t["heatmaps"]["notes"])
    for (lab, model), row in heat.items():
        assert row["images"] == 4 and row["maps"] == 12 and 0 <= row["peak maps"] <= 12
        assert (row["peak in drawn finding"] is None) == (row["peak maps"] == 0)
        if model != "baseline":
            # r and IoU average the pairs of maps neither of which is flat (a tiny model's CAM can be all zero)
            assert 0 <= row["maps compared"] <= 12
            if row["maps compared"] == 0:
                assert row["r (Pearson)"] is None and row["top-10% IoU"] is None
            else:
                assert -1 <= row["r (Pearson)"] <= 1 and 0 <= row["top-10% IoU"] <= 1
            assert row["mean AUROC - baseline"] == pytest.approx(
                t["auroc"]["mean"][lab] - t["auroc"]["mean"][labels[0]]
            )
    assert labels[1].startswith("post-training prune70 ft30") and labels[2].startswith("post-training ptq-all")
    assert labels[3].startswith("prune-adaptive+qat-all")
    assert [t["time"][lab]["parent"] for lab in labels] == [None, runs["baseline"].name, runs["baseline"].name, None]
    parent_h = t["time"][labels[0]]["total h"]
    assert t["time"][labels[2]]["compute h (with parent)"] == pytest.approx(parent_h + t["time"][labels[2]]["total h"])
    s = t["storage"]
    assert abs(s[labels[1]]["sparsity"] - 0.7) <= 0.005 and s[labels[2]]["sparsity"] is None
    assert s[labels[1]]["sparse AUROC"] is not None and s[labels[2]]["int8 AUROC"] is not None
    assert s[labels[2]]["onnx_int8 AUROC"] is not None and s[labels[3]]["onnx_int8 AUROC"] is not None
    assert s[labels[2]]["onnx_int8 bytes"] <= 0.30 * s[labels[2]]["fp32 bytes"]
    table = chexui("compare", *refs, "--runs-dir", runs_dir).stdout
    assert "parent" in table and runs["baseline"].name in table


@pytest.mark.slow
def test_a_stopped_compress_fine_tune_resumes_like_any_run(post_training):
    """The fine-tune of the prune run above, stopped after its first epoch, resumed to end at epoch 2:
    its masks held, its export made when it completed."""
    _, runs = post_training
    run = runs["prune"]
    ev = events_of(run)
    assert [e["status"] for e in ev if e["type"] == "run_finished"] == ["stopped", "completed"]
    assert len([e for e in ev if e["type"] == "run_started"]) == 1 and [e for e in ev if e["type"] == "restarted"]
    epochs = [e for e in ev if e["type"] == "epoch_ended"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(abs(e["sparsity"] - 0.7) <= 0.005 for e in epochs)
    assert "run completed: 2 epochs" in runs["resume_output"]
    assert [e["type"] for e in ev].index("exported") > [e["type"] for e in ev].index("restarted")


def test_compress_without_a_best_model_or_with_nothing_to_do_exits_2(tmp_path, tiny_preset):
    run = tmp_path / "runs" / "20260101-000000-untrained"
    (run / "checkpoints").mkdir(parents=True)
    cfg = config.validate(config.load_toml(tiny_preset) | {"extends": ""}, str(tiny_preset))
    config.save(cfg, run / "config.toml")
    (run / "events.jsonl").write_text("")
    r = chexui("compress", str(run), "--ptq", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "best.pt: not found; compress starts from a run's best model" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = chexui("compress", str(run), "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "nothing to do" in r.stderr
    r = chexui("compress", str(run), "--prune", "0.995", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "--prune '0.995'" in r.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [run.name]  # no run dir was made


def test_compress_refuses_a_running_parent_and_compare_notes_a_changed_one(tmp_path, tiny_demo):
    """A parent still running has a best.pt that moves on (the child came from an epoch-1 snapshot and
    compare reported -0.045 against another final parent): compress refuses it. A parent whose best.pt
    changed after its child started is named under compare's training-time table."""
    from chexui import compare
    from chexui.compress import compress_config
    from chexui.runs import load_run
    from engine.errors import UserError
    from tests import hostile
    from tests.test_faults import _tiny_config, fake_run, finished, started
    from tests.test_hostile import _fake_chexui_launch

    runs = tmp_path / "runs"
    cfg = _tiny_config(tiny_demo)
    parent = fake_run(runs, "20260101-000000-parent", cfg, [started(cfg, "parent")])
    (parent / "checkpoints" / "best.pt").write_bytes(b"the best model at epoch 1")
    launcher = _fake_chexui_launch(tmp_path, parent)
    try:
        time.sleep(0.5)
        hostile.fake_launcher_json(parent, launcher.pid)
        assert load_run(parent).status == "running"
        with pytest.raises(UserError, match="is running: compress starts from a completed or stopped run"):
            compress_config(parent, "0.7", 0, False, None, [])
    finally:
        launcher.kill()
        launcher.wait()
    child_cfg = {**cfg, "compress": {**cfg["compress"], "parent": str(parent)}}
    child_start = {
        **started(child_cfg, "child"),
        "parent": {"run_id": parent.name, "path": str(parent), "best_sha256": "0" * 64},
    }
    child = fake_run(runs, "20260101-000001-child", child_cfg, [child_start, finished("completed")])
    tbls = compare.tables([load_run(parent), load_run(child)])
    [note] = tbls["time"].attrs["notes"]
    assert "best.pt has changed since this run started from it" in note and parent.name in note
    assert note.splitlines()[0] in compare.render(tbls, "markdown")


def _standalone(tmp_path: Path, code: str, *args) -> None:
    """`code` in a fresh `python -I` (no site-packages path tricks, no chexui on the path: the test's
    own directory is not importable either) that may import torch, torchvision, numpy, onnxruntime."""
    import subprocess
    import sys

    # (the venv's editable install would still find chexui's packages: they are made unimportable)
    code = "import sys; sys.modules.update(engine=None, chexui=None)\n" + code
    r = subprocess.run(
        [sys.executable, "-I", "-c", code, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.slow
def test_channel_pruned_compress_ships_a_smaller_model_that_loads_without_chexui(tmp_path, post_training, tiny_demo):
    from engine.data import nih
    from engine.data.batches import Images, to_input
    from engine.inference.export import cost

    _, runs = post_training
    run, parent = runs["channel"], runs["baseline"]
    ev = events_of(run)
    started = [e for e in ev if e["type"] == "run_started"][0]
    assert started["world_size"] == 2 and started["config"]["prune"]["structure"] == "channel"
    assert started["config"]["distill"] == {"enabled": True, "teacher": "parent", "alpha": 0.5, "temperature": 2.0}
    # compress's channel defaults: Taylor scores, and a fine-tune at half the parent's initial rate
    # (or its last, if higher), not at its last rate as after magnitude pruning
    parent_lr = [e for e in events_of(parent) if e["type"] == "run_started"][0]["config"]["train"]["lr"]
    parent_last = [e for e in events_of(parent) if e["type"] == "epoch_ended"][-1]["lr"]
    assert started["config"]["prune"]["importance"] == "taylor"
    assert started["config"]["train"]["lr"] == pytest.approx(max(parent_lr / 2, parent_last))
    (epoch,) = [e for e in ev if e["type"] == "epoch_ended"]
    assert epoch["sparsity"] == pytest.approx(0.5, abs=0.01) and epoch["macs_ratio"] < 0.6
    assert _finished(run)["status"] == "completed"
    log = (run / "logs" / "engine.log").read_text()
    assert f"distilling from {parent.name}" in log and "channel counts identical on 2 ranks" in log
    exported = [e for e in ev if e["type"] == "exported"][-1]
    assert exported["structure"] == "channel" and exported["channel_counts_agree"] is True
    dense = cost(build_model("resnet18", "none"), 32)
    arts = _artifacts(run)
    assert {"fp32", "onnx_fp32"} <= set(arts) and "sparse" not in arts
    for a in arts.values():  # physically smaller: MACs, parameters and bytes
        assert a["macs"] < 0.6 * dense["macs"] and a["params"] < 0.6 * dense["params"]
    assert arts["fp32"]["bytes"] < 0.6 * 4 * dense["params"]
    # the files outside chexui reproduce the run's own probabilities of its test images
    kept = predictions.load(run / "predictions" / "test_fp32.npz")
    index = nih.index_dataset(tiny_demo)
    rows = [list(index.names).index(name) for name in kept["image_ids"]]
    x, _, _ = Images(index, 32)[rows]
    np.save(tmp_path / "x.npy", to_input(x, torch.device("cpu")).numpy())
    loader = Path(__file__).parents[1] / "docs" / "load_model.py"
    _standalone(
        tmp_path,
        "import runpy; sys.argv = ['load_model.py', *sys.argv[1:]]; "
        f"runpy.run_path({str(loader)!r}, run_name='__main__')",
        run / arts["fp32"]["path"],
        "x.npy",
        "pt.npy",
    )
    assert np.abs(np.load(tmp_path / "pt.npy") - kept["probs"]).max() < 1e-5
    _standalone(
        tmp_path,
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "x = np.load('x.npy')\n"
        "out = s.run(None, {s.get_inputs()[0].name: x})[0]\n"
        "np.save('onnx.npy', 1 / (1 + np.exp(-out.astype(np.float64))))",
        run / arts["onnx_fp32"]["path"],
    )
    onnx_kept = predictions.load(run / "predictions" / "test_onnx_fp32.npz")["probs"]
    assert np.abs(np.load(tmp_path / "onnx.npy") - onnx_kept).max() < 1e-5
    # int8 on top: a post-training int8 run of the channel-pruned run quantizes the smaller model
    r = chexui("compress", str(run), "--ptq", "--name", "channel-ptq", *QUICK, "--runs-dir", run.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    int8 = next(d for d in run.parent.iterdir() if d.name.endswith("-channel-ptq"))
    int8_arts = _artifacts(int8)
    assert int8_arts["int8"]["macs"] == arts["fp32"]["macs"] and int8_arts["fp32"]["bytes"] == arts["fp32"]["bytes"]
    assert not [e for e in events_of(int8) if e["type"] == "epoch_ended" and e.get("macs_ratio")]  # not pruned again
    int8_cfg = [e for e in events_of(int8) if e["type"] == "run_started"][0]["config"]
    assert not int8_cfg["prune"]["enabled"] and not int8_cfg["distill"]["enabled"]  # (its parent's, not its own)
    # `chexui bench` compares speed with the dense ancestor: the parent's parent here
    from engine.inference.bench import dense_reference

    found = dense_reference(int8)
    assert found is not None and found.resolve() == parent.resolve() and dense_reference(parent) is None
