"""From scores to decisions: operating points chosen on validation, the metrics at them, calibration,
and loading of foreign weights that cannot silently fail."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest
import torch
from torchvision import models as tv_models

from engine.errors import ConfigError
from engine.evaluation import operating, predictions
from engine.labels import LABELS
from engine.models.chexnet import build_model
from tests.conftest import chexui, events_of

SIGMOID = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731


def test_youden_and_sensitivity_thresholds_match_the_analytic_ones():
    """Negatives N(0, 0.25), positives N(1, 0.25): Youden's J peaks where the densities cross, at 0.5;
    90 % sensitivity is the positives' 10th percentile, 1 - 1.2816 x 0.25."""
    rng = np.random.default_rng(0)
    n = 50_000
    y = np.r_[np.zeros(n), np.ones(n)]
    s = np.r_[rng.normal(0, 0.25, n), rng.normal(1, 0.25, n)]
    assert abs(operating.threshold(y, s, "youden") - 0.5) <= 0.02
    t90 = operating.threshold(y, s, "sensitivity=0.90")
    assert abs(t90 - (1 - 1.28155 * 0.25)) <= 0.02 and (s[y == 1] >= t90).mean() >= 0.90
    t_spec = operating.threshold(y, s, "specificity=0.95")
    assert (s[y == 0] < t_spec).mean() >= 0.95 and abs(t_spec - 1.64485 * 0.25) <= 0.02
    f1 = operating.threshold(y, s, "f1")
    assert 0.35 <= f1 <= 0.65
    assert operating.threshold(np.zeros(10), np.linspace(0, 1, 10), "youden") is None  # no positives
    with pytest.raises(ConfigError, match="eval.operating_point"):
        operating.parse_rule("sensitivity=1.5")


def test_metrics_at_a_threshold_count_calls_and_have_bootstrap_intervals():
    from engine.evaluation.bootstrap import Spec

    y = np.zeros((8, len(LABELS)))
    p = np.full((8, len(LABELS)), 0.1)
    y[:4, 0] = 1
    p[:, 0] = [0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.1, 0.1]  # at 0.5: tp 3, fn 1, fp 1, tn 3
    res = operating.at_thresholds(y, p, {"Atelectasis": 0.5}, np.arange(8), Spec(200, 0))
    a = res["Atelectasis"]
    assert (a["tp"], a["fn"], a["fp"], a["tn"]) == (3, 1, 1, 3)
    assert a["sensitivity"] == a["specificity"] == a["ppv"] == a["npv"] == a["f1"] == 0.75
    lo, hi = a["sensitivity_ci"]
    assert lo <= 0.75 <= hi and lo < hi
    assert res["Cardiomegaly"] is None  # no threshold (e.g. no positives in validation)


def test_calibration_error_and_temperature_scaling():
    rng = np.random.default_rng(0)
    p = rng.random(20_000)
    y = (rng.random(20_000) < p).astype(float)  # perfectly calibrated
    assert operating.ece(y, p) < 0.02
    z = 3 * operating.logits_of(p)  # overconfident: 3x the logits
    assert operating.ece(y, SIGMOID(z)) > 0.1
    t = operating.fit_temperature(y[:10_000], z[:10_000])  # fitted on one half ("validation")
    assert 2.5 < t < 3.5
    assert operating.ece(y[10_000:], SIGMOID(z[10_000:] / t)) < 0.02  # the other half ("test")


def _legacy(state: dict) -> dict:
    """torchvision's pre-0.3 DenseNet names: `denselayer1.norm1.weight` -> `denselayer1.norm.1.weight`."""
    return {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}


def test_foreign_densenet_weights_load_with_counts_or_are_refused(tmp_path):
    sd = {
        k: v
        for k, v in tv_models.densenet121(weights=None).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }  # (old files have none)
    torch.save(_legacy(sd), tmp_path / "legacy.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "module.pt")
    torch.save({k: v for k, v in sd.items() if ".denseblock3." not in k}, tmp_path / "no-block3.pt")
    for name in ("legacy", "module"):
        logged = []
        model = build_model("densenet121", str(tmp_path / f"{name}.pt"), log=logged.append)
        # 1,000-class ImageNet head: 2 tensors of another shape, the 14-label head starts fresh
        assert f"{len(sd) - 2} tensors loaded" in logged[0] and "2 of another shape" in logged[0], logged
        w = model.features.denseblock4.denselayer16.norm2.weight
        assert torch.equal(w, sd["features.denseblock4.denselayer16.norm2.weight"])
    with pytest.raises(ConfigError, match=r"backbone tensors are missing .*features\.denseblock3\.denselayer1"):
        build_model("densenet121", str(tmp_path / "no-block3.pt"))


@pytest.mark.slow
def test_a_pretrained_file_missing_a_block_stops_the_run_with_exit_2(tmp_path, tiny_preset):
    sd = tv_models.densenet121(weights=None).state_dict()
    torch.save({f"module.{k}": v for k, v in sd.items() if ".denseblock4." not in k}, tmp_path / "partial.pt")
    r = chexui(
        "run",
        "--headless",
        "--preset",
        tiny_preset,
        "--set",
        "model.arch=densenet121",
        "--set",
        f"model.pretrained={tmp_path / 'partial.pt'}",
        "--runs-dir",
        tmp_path / "runs",
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert "error: model.pretrained" in r.stdout and "backbone tensors are missing" in r.stdout
    assert "features.denseblock4.denselayer1.conv1.weight" in r.stdout and "run failed" in r.stdout


@pytest.mark.slow
def test_thresholds_come_from_validation_travel_with_the_model_and_decide_predict(tmp_path, compressed_run, tiny_demo):
    run, cli = compressed_run  # QAT + pruning, 2 processes, exported
    evs = events_of(run)
    op = next(e for e in evs if e["type"] == "operating_points")
    assert op["rule"] == "youden" and op["split"] == "val"
    val = predictions.load(run / "predictions" / "val.npz")
    test = predictions.load(run / "predictions" / "test.npz")
    assert op["thresholds"] == operating.choose(val["labels"], val["probs"], "youden")
    # chosen on the validation split: what test's labels would have chosen differs
    assert op["thresholds"] != operating.choose(test["labels"], test["probs"], "youden")
    # the test evaluation reports the calls at those thresholds, as its saved predictions give them
    ev = next(e for e in evs if e["type"] == "evaluated" and e["split"] == "test")
    for j, name in enumerate(LABELS):
        at, t = ev["at_threshold"][name], op["thresholds"][name]
        if t is None:
            assert at is None
            continue
        call, y = test["probs"][:, j] >= t, test["labels"][:, j] == 1
        assert (at["tp"], at["fp"]) == (int((call & y).sum()), int((call & ~y).sum())) and at["threshold"] == t
    assert set(ev["ece"]) == set(LABELS) and "sensitivity" in cli.stdout  # the headless test table shows them
    # stored with the best checkpoint and inside every exported file
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert best["operating_points"]["thresholds"] == op["thresholds"]
    assert (
        torch.load(run / "export" / "model_fp32.pt", weights_only=True)["operating_points"]["thresholds"]
        == op["thresholds"]
    )
    with zipfile.ZipFile(run / "export" / "model_int8.pt2") as z:
        entry = next(n for n in z.namelist() if n.endswith("chexui_operating_points.json"))
        assert json.loads(z.read(entry))["thresholds"] == op["thresholds"]
    import onnx

    meta = {
        p.key: p.value
        for p in onnx.load(str(run / "export" / "model_int8.onnx"), load_external_data=False).metadata_props
    }
    assert json.loads(meta["chexui_operating_points.json"])["thresholds"] == op["thresholds"]
    # predict's calls on 5 test images are the stored thresholds applied to its probabilities
    imgs = [str(tiny_demo / "images" / n) for n in test["image_ids"][:5]]
    r = chexui("predict", str(run), *imgs, "--format", "json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["operating_point"]["thresholds"] == op["thresholds"]
    for row in res["rows"]:
        for j, name in enumerate(LABELS):
            t = op["thresholds"][name]
            assert row["calls"][j] == (None if t is None else row["probs"][j] >= t)
        assert row["positive"] == [n for n, c in zip(LABELS, row["calls"]) if c]
    from engine.inference.predict import predict

    cal = predict(run, imgs, calibrate=True)
    assert [r["calls"] for r in cal["rows"]] == [r["calls"] for r in res["rows"]]  # temperatures move no call
    assert cal["calibrated"] and [r["probs"] for r in cal["rows"]] != [r["probs"] for r in res["rows"]]
