"""Reproducing the study: sweeps (a grid as a queue of runs), `compare` tables and `report`.

compare/report tests read real runs recorded into tests/data/runs (python -m tests.data.record_runs):
the demo-grid sweep (2 LRs x 2 batch sizes on the demo data), a prune70+QAT run and a QAT run.
"""

from __future__ import annotations

import csv
import io
import json
import re
import signal
from pathlib import Path

import pytest

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
    grid.write_text(f'description = "test grid"\npreset = "{tiny_preset}"\n[set]\n"train.epochs" = 2\n'
                    '[grid]\n"train.lr" = [0.01, 0.001]\n')
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


def test_sweep_file_errors_exit_2_before_any_run(tmp_path):
    bad = tmp_path / "bad.sweep.toml"
    bad.write_text('preset = "demo"\n[grid]\n"train.lrr" = [0.1, 0.01]\n')
    r = chexui("sweep", bad, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "train.lrr" in r.stderr and "did you mean 'lr'" in r.stderr
    assert not (tmp_path / "runs").exists() or not [d for d in (tmp_path / "runs").iterdir() if d.is_dir()
                                                        and d.name != ".sweeps"]
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
    assert len(grid) == 6 and len(after) == 7 and {p["parent"] for p in after} == {0}  # the dense run only
    assert sweep_mod.point_label(after[1]) == "compress prune=0.5 finetune_epochs=5 of run 1"
    for name in ("study/post-training-densenet121", "study/post-training-demo"):
        assert any("compress" in p for p in sweep_mod.load_file(sweep_mod.find_file(name), [], None, tmp_path).points)
    bad = tmp_path / "bad.sweep.toml"
    bad.write_text('[grid]\npreset = ["demo"]\n[[compress]]\nprune = 1.5\n')
    r = chexui("sweep", bad, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "[[compress]]" in r.stderr and "--prune '1.5'" in r.stderr, r.stderr


def test_study_presets_and_sweep_files_resolve():
    r = chexui("presets", "list", "--json")
    names = {p["name"] for p in json.loads(r.stdout)}
    for n in ("study/resnet50", "study/densenet121", "study/densenet121-tuned-lr0.01", "study/densenet121-fixed50",
              "study/resnet50-prune70", "study/densenet121-prune-adaptive", "study/resnet50-qat-all"):
        assert n in names
    assert not any(n.endswith(".sweep") for n in names)
    shown = chexui("presets", "show", "study/densenet121-fixed50").stdout
    assert "epochs = 50" in shown and "early_stop_patience = 0" in shown and "min_lr = 1e-07" in shown


def test_compare_a_recorded_sweep_in_all_four_formats():
    sweep = recorded_sweep()
    data = json.loads(compare(sweep, fmt="json"))
    assert set(data) == {"auroc", "time", "storage", "paired"}
    assert list(data["auroc"]) == [*LABELS, "mean", "labels in mean"]
    assert set(data["auroc"]["labels in mean"].values()) == {14}
    # runs recorded before predictions were kept cannot be paired, and the table says so
    assert data["paired"]["runs"] == {} and len(data["paired"]["notes"]) == 3
    assert all("no saved predictions" in n for n in data["paired"]["notes"])
    cols = list(data["auroc"]["Atelectasis"])
    assert cols[-1] == "CheXNet (paper)" and len(cols) == 5
    assert sorted(cols[:-1]) == sorted(f"B={b} LR={lr}" for b in (16, 32) for lr in (0.01, 0.001))
    assert data["auroc"]["Hernia"]["CheXNet (paper)"] == CHEXNET_AUROC["Hernia"]
    # the table's numbers are the runs' own test evaluations
    sw = json.loads((RECORDED / ".sweeps" / f"{sweep}.json").read_text())
    p0 = sw["points"][0]
    label = f"B={p0['overrides']['train.batch_size']} LR={p0['overrides']['train.lr']}"
    test = [e for e in events_of(RECORDED / p0["run"]) if e["type"] == "evaluated" and e["split"] == "test"][0]
    assert data["auroc"]["Effusion"][label] == pytest.approx(test["auc"]["Effusion"], abs=1e-9)
    assert data["time"][label]["epochs"] == 2 and data["time"][label]["processes"] == 1
    rows = list(csv.reader(io.StringIO(compare(sweep, fmt="csv"))))
    assert rows[0] == ["# Test AUROC per class"] and rows[1][0] == "label" and rows[1][-1] == "CheXNet (paper)"
    assert ["# Training time"] in rows and ["# Storage"] in rows
    md = compare(sweep, fmt="markdown")
    assert "### Test AUROC per class" in md and re.search(r"\|\s+Hernia \|.*0\.9164 \|", md)
    table = compare(sweep, fmt="table")
    assert "Training time" in table and "CheXNet (paper)" in table and label in table


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
