"""Reproducing the study: sweeps (a grid as a queue of runs), `compare` tables and `report`.

compare/report tests read real runs recorded into tests/data/runs (python -m tests.data.record_runs):
the demo-grid sweep (2 LRs x 2 batch sizes on the demo data), a prune70+QAT run and a QAT run.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest

from chexui.compare import REFERENCE
from engine.events import final_status
from engine.labels import CHEXNET_AUROC, LABELS
from tests.conftest import chexui, chexui_bg, events_of, wait_for_event

RECORDED = Path(__file__).parent / "data" / "runs"


def recorded_sweep() -> str:
    return next((RECORDED / ".sweeps").glob("*.json")).stem


def recorded_compressed() -> list[str]:
    return sorted(d.name for d in RECORDED.iterdir() if d.is_dir() and ("qat" in d.name))


def compare(*refs: str, fmt: str) -> str:
    r = chexui("compare", *refs, "--runs-dir", RECORDED, "--format", fmt)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_sweep_runs_a_grid_as_one_group_and_a_stopped_sweep_resumes(tmp_path, tiny_preset):
    grid = tmp_path / "grid.sweep.toml"
    grid.write_text(
        f'description = "test grid"\npreset = "{tiny_preset}"\n[set]\n"train.epochs" = 2\n'
        '[grid]\n"train.lr" = [0.01, 0.001]\n'
    )
    runs = tmp_path / "runs"
    proc = chexui_bg("sweep", grid, "--runs-dir", runs)
    try:
        first, _ = wait_for_event(runs, lambda e: e["type"] == "epoch_ended" and e["epoch"] == 1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "sweep stopped" in out, out
    assert final_status(events_of(first)) == "stopped"
    sweep_id = re.search(r"chexui sweep --resume (\S+)", out).group(1)
    r = chexui("sweep", "--resume", sweep_id, "--runs-dir", runs)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(chexui("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert len(rows) == 2 and {row["sweep"] for row in rows} == {sweep_id}
    assert all(row["status"] == "completed" and row["epochs"] == 2 for row in rows)
    assert any(e["type"] == "restarted" for e in events_of(first))  # continued, not started over
    listing = chexui("runs", "list", "--runs-dir", runs).stdout
    assert listing.count(f"sweep {sweep_id}") == 1


@pytest.mark.slow
def test_a_sweep_says_why_a_run_failed(tmp_path, tiny_preset):
    """A run that fails (here: pretrained weights that lack the backbone, as without ImageNet's file) is
    reported in the sweep's own output with the run's error, not only as a missing AUROC."""
    import torch

    empty = tmp_path / "empty.pt"
    torch.save({}, empty)
    grid = tmp_path / "grid.sweep.toml"
    grid.write_text(f'preset = "{tiny_preset}"\n[set]\n"model.pretrained" = "{empty}"\n[grid]\n"train.lr" = [0.001]\n')
    r = chexui("sweep", grid, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"failed \S+: model\.pretrained .*backbone tensors are missing", r.stdout), r.stdout
    assert "test AUROC -" not in r.stdout


def test_sweep_file_errors_exit_2_before_any_run(tmp_path):
    bad = tmp_path / "bad.sweep.toml"
    bad.write_text('preset = "demo"\n[grid]\n"train.lrr" = [0.1, 0.01]\n')
    r = chexui("sweep", bad, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "train.lrr" in r.stderr and "did you mean 'lr'" in r.stderr
    assert not (tmp_path / "runs").exists() or not [
        d for d in (tmp_path / "runs").iterdir() if d.is_dir() and d.name != ".sweeps"
    ]
    r = chexui("sweep", "--resume", "nope", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "sweep 'nope' not found" in r.stderr


def test_a_sweep_over_presets_adds_post_training_runs_of_its_dense_runs(tmp_path):
    """The study's post-training sweeps: a grid over presets, with [[compress]] entries applied to each
    grid run without compression; a bad entry exits 2 before anything runs."""
    from chexui import sweep as sweep_mod

    sw = sweep_mod.load_file(sweep_mod.find_file("study/post-training-resnet50"), [], None, tmp_path)
    grid = [p for p in sw.points if "compress" not in p]
    after = [p for p in sw.points if "compress" in p]
    assert [p["overrides"]["preset"] for p in grid][:2] == ["study/resnet50", "study/resnet50-prune50"]
    # 6 presets x 3 seeds (seed 0 of each first); 7 post-training runs of each seed's dense run
    assert len(grid) == 18 and [p["overrides"]["train.seed"] for p in grid] == [0] * 6 + [1] * 6 + [2] * 6
    assert len(after) == 21 and {p["parent"] for p in after} == {0, 13, 26}  # (indices into sw.points)
    assert sweep_mod.point_label(after[1]) == "compress prune=0.5 finetune_epochs=5 of run 1"
    for name in ("study/post-training-densenet121", "study/post-training-demo"):
        assert any("compress" in p for p in sweep_mod.load_file(sweep_mod.find_file(name), [], None, tmp_path).points)
    bad = tmp_path / "bad.sweep.toml"
    bad.write_text('[grid]\npreset = ["demo"]\n[[compress]]\nprune = 1.5\n')
    r = chexui("sweep", bad, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "[[compress]]" in r.stderr and "--prune '1.5'" in r.stderr, r.stderr


def test_every_study_sweep_compares_like_with_like():
    """Every arm of a study sweep shares every key of the training recipe (data, model, train,
    distributed, eval) with the others, but for the keys its grid varies: a dense baseline with another
    recipe than its pruned arms (the DenseNet121 post-training sweep's grid base: patience 5, min LR
    1e-5, against the tuned 10 and 1e-7) is refused here. Seeds come from `seeds`, 3 for every study
    sweep, and `--seeds N` replaces them."""
    from chexui import presets as presets_mod
    from chexui import sweep as sweep_mod
    from engine import config as cfg_mod

    files = sorted((presets_mod.builtin_dir() / "study").glob("*.sweep.toml"))
    assert len(files) >= 8
    for f in files:
        sw = sweep_mod.load_file(f, [], None, tmp := Path(tempfile.mkdtemp()))
        shutil.rmtree(tmp)
        assert sw.grid[sweep_mod.SEED_KEY] == [0, 1, 2], f.name
        recipe = [
            {
                k: v
                for k, v in cfg_mod.flatten(sw.config(p)).items()
                if k.split(".")[0] in ("data", "model", "train", "distributed", "eval") and k not in sw.grid
            }
            for p in sw.points
            if "compress" not in p
        ]
        for r in recipe[1:]:
            assert r == recipe[0], (
                f.name,
                {k: (recipe[0].get(k), r.get(k)) for k in set(r) | set(recipe[0]) if r.get(k) != recipe[0].get(k)},
            )
    sw = sweep_mod.load_file(sweep_mod.find_file("study/demo-grid"), [], None, Path(tempfile.mkdtemp()), seeds=2)
    assert sw.grid[sweep_mod.SEED_KEY] == [0, 1] and len(sw.points) == 2 * 4


def test_study_presets_and_sweep_files_resolve():
    r = chexui("presets", "list", "--json")
    names = {p["name"] for p in json.loads(r.stdout)}
    for n in (
        "study/resnet50",
        "study/densenet121",
        "study/densenet121-tuned-lr0.01",
        "study/densenet121-fixed50",
        "study/resnet50-prune70",
        "study/densenet121-prune-adaptive",
        "study/resnet50-qat-all",
    ):
        assert n in names
    assert not any(n.endswith(".sweep") for n in names)
    shown = chexui("presets", "show", "study/densenet121-fixed50").stdout
    assert "epochs = 50" in shown and "early_stop_patience = 0" in shown and "min_lr = 1e-07" in shown


@pytest.mark.slow
def test_compare_a_recorded_sweep_in_all_four_formats():
    sweep = recorded_sweep()
    data = json.loads(compare(sweep, fmt="json"))
    assert set(data) == {"auroc", "auroc_detail", "time", "storage", "paired"}
    assert list(data["auroc"]) == [*LABELS, "mean", "labels in mean"]
    assert set(data["auroc"]["labels in mean"].values()) == {14}
    # runs recorded before predictions were kept cannot be paired, and the table says so
    assert data["paired"]["runs"] == {} and len(data["paired"]["notes"]) == 3
    assert all("no saved predictions" in n for n in data["paired"]["notes"])
    cols = list(data["auroc"]["Atelectasis"])
    assert cols[-1] == REFERENCE and "split" in REFERENCE and len(cols) == 5
    assert sorted(cols[:-1]) == sorted(f"B={b} LR={lr}" for b in (16, 32) for lr in (0.01, 0.001))
    assert data["auroc"]["Hernia"][REFERENCE] == CHEXNET_AUROC["Hernia"]
    # the table's numbers are the runs' own test evaluations
    sw = json.loads((RECORDED / ".sweeps" / f"{sweep}.json").read_text())
    p0 = sw["points"][0]
    label = f"B={p0['overrides']['train.batch_size']} LR={p0['overrides']['train.lr']}"
    test = [e for e in events_of(RECORDED / p0["run"]) if e["type"] == "evaluated" and e["split"] == "test"][0]
    assert data["auroc"]["Effusion"][label] == pytest.approx(test["auc"]["Effusion"], abs=1e-9)
    assert data["time"][label]["epochs"] == 2 and data["time"][label]["processes"] == 1
    rows = list(csv.reader(io.StringIO(compare(sweep, fmt="csv"))))
    assert rows[0] == ["# Test AUROC per class"] and rows[1][0] == "label" and rows[1][-1] == REFERENCE
    assert ["# Training time"] in rows and ["# Storage"] in rows
    md = compare(sweep, fmt="markdown")
    assert "### Test AUROC per class" in md and re.search(r"\|\s+Hernia \|.*0\.9164 \|", md)
    table = compare(sweep, fmt="table")
    assert "Training time" in table and "CheXNet (paper" in table and label in table


@pytest.mark.slow
def test_compare_storage_of_the_recorded_pruned_and_qat_runs():
    tables = json.loads(compare(*recorded_compressed(), fmt="json"))
    data = tables["storage"]
    assert len(data) == 2
    for label, row in data.items():
        assert row["int8 bytes"] <= 0.30 * row["fp32 bytes"] and row["int8 gzip"] < row["int8 bytes"]
        # the int8 model vs the fake-quantized QAT model it was converted from (the run's test AUROC)
        assert abs(row["int8 AUROC"] - tables["auroc"]["mean"][label]) <= 0.02
        if label.startswith("prune"):
            assert row["sparse bytes"] <= 0.45 * row["fp32 bytes"] and row["nonzero"] < 0.5 * row["parameters"]


@pytest.mark.slow
def test_report_writes_markdown_and_every_figure(tmp_path):
    out = tmp_path / "report"
    r = chexui("report", recorded_sweep(), *recorded_compressed(), "--runs-dir", RECORDED, "--out", out)
    assert r.returncode == 0, r.stderr
    md = (out / "report.md").read_text()
    for title in ("Test AUROC per class", "Training time", "Storage", "Grad-CAM agreement with the baseline"):
        assert f"### {title}" in md
    # recorded runs keep events only: the agreement table says why it is empty
    assert "none computed: the baseline has no model or test predictions to read" in md
    for fig in ("loss.png", "auroc.png", "time.png", "storage.png"):
        assert f"]({fig})" in md
        png = (out / fig).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_compare_pools_seeds_into_arms_with_seed_variation_in_the_ci(tmp_path):
    """Runs that differ only by train.seed are one arm: mean and SD over seeds, and the paired difference
    between arms from a hierarchical bootstrap (patients, then seeds), whose CI widens with the
    seed-to-seed spread; per-label stars under Holm's adjustment, the caption saying so."""
    from engine import config as cfg_mod
    from engine.evaluation import metrics, predictions
    from tests.test_faults import fake_run, finished, started
    from tests.test_fidelity import clustered
    from tests.test_hostile import in_process as chexui  # (the CLI in this process: six compares in seconds)

    rng = np.random.default_rng(0)
    y, base, pat = clustered(150, rng, d=1.0)
    ids = np.array([f"img{i}.png" for i in range(len(y))])
    runs = tmp_path / "runs"

    def make(name: str, lr: float, seed: int, scores: np.ndarray) -> None:
        cfg = cfg_mod.validate({"name": "arm", "train": {"lr": lr, "seed": seed}})
        aucs, mean, _ = metrics.per_class_auroc(y, scores)
        ev = {
            "type": "evaluated",
            "split": "test",
            "n": len(y),
            "auc": aucs,
            "auc_mean": mean,
            "auc_mean_ci": [mean - 0.02, mean + 0.02],
            "bootstrap": {"resamples": 300, "seed": 0, "unit": "patient"},
        }
        st = started(cfg, name)
        st["dataset"]["split_sha256"] = "same"
        epoch = {
            "type": "epoch_ended",
            "epoch": 1,
            "train_loss": 0.1,
            "val_loss": 0.1,
            "val_auc": {},
            "val_auc_mean": 0.9 - lr,
            "lr": lr,
            "epoch_time_s": 1.0,
            "images_per_s": 1.0,
            "sparsity": None,
            "memory_mb": [1.0],
        }  # (the LR=0.001 arm validates better; it tests worse)
        d = fake_run(runs, name, cfg, [st, epoch, ev, finished("completed")])
        predictions.save(d, "test", ids, pat, y, 1 / (1 + np.exp(-scores)))

    for seed in range(3):  # arm A: seeds that barely differ; arm B: better by 0.3 in the score, seeds spread
        make(f"2026010{seed}-a", 0.001, seed, base + rng.normal(0, 0.05, base.shape))
        make(f"2026010{seed}-b", 0.01, seed, base + 0.3 * y + rng.normal(0, 0.05, base.shape) + rng.normal(0, 0.4) * y)
    r = chexui("compare", *sorted(d.name for d in runs.iterdir()), "--format", "json", "--runs-dir", runs)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    arms = [c for c in out["auroc"]["mean"] if c != REFERENCE]
    assert len(arms) == 2 and all("(3 seeds)" in a for a in arms) and all("LR=" in a for a in arms)
    assert out["auroc_detail"]["seeds"] == {a: 3 for a in arms} and set(out["auroc_detail"]["sd"]) == set(arms)
    paired = out["paired"]
    assert paired["unit"] == "arm" and "seed" in paired["bootstrap"]["unit"]
    [(arm_b, rows)] = paired["runs"].items()
    mean = rows["mean"]
    assert mean["delta"] > 0 and mean["ci_lo"] <= mean["delta"] <= mean["ci_hi"]
    # the same two arms' first runs alone: the patient bootstrap of one run each has a narrower CI
    single = json.loads(chexui("compare", "20260100-a", "20260100-b", "--format", "json", "--runs-dir", runs).stdout)
    [(_, one)] = single["paired"]["runs"].items()
    assert (mean["ci_hi"] - mean["ci_lo"]) > 1.2 * (one["mean"]["ci_hi"] - one["mean"]["ci_lo"])
    for name in LABELS:  # stars follow Holm's adjusted p, which is never below the raw p
        row = rows[name]
        assert row["p_holm"] >= row["p"] and row["distinguishable"] == (row["p_holm"] <= 0.05)
    table = chexui("compare", *sorted(d.name for d in runs.iterdir()), "--runs-dir", runs).stdout
    assert "±" in table and "Holm" in table and "seed" in table
    # the best configuration is picked on validation, never on test
    assert out["auroc_detail"]["best_by_val"][0] == next(a for a in arms if "LR=0.001" in a)
    assert "Best configuration by validation AUROC" in table
    # every printed test AUROC of a single run carries its CI: compare's table and runs list
    one_table = chexui("compare", "20260100-a", "20260100-b", "--runs-dir", runs).stdout
    mean_a = json.loads(chexui("runs", "show", "20260100-a", "--json", "--runs-dir", runs).stdout)["test_auc"]
    assert f"{mean_a:.4f} ({mean_a - 0.02:.3f}-{mean_a + 0.02:.3f})" in one_table
    listing = chexui("runs", "list", "--runs-dir", runs).stdout
    assert f"{mean_a:.4f} (14/14) {mean_a - 0.02:.3f}-{mean_a + 0.02:.3f}" in listing
