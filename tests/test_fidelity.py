"""The study, exactly: one test per deviation fixed (LR plateau, pruning degree, unlisted widths, best
epoch during the schedule, ResNet50 weights, validation loss, QAT freezing and bit width, what `eval`
measures, labels in a mean), the kept predictions, and the patient bootstrap's statistics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from engine import config
from engine.compression.prune import Pruner, schedule
from engine.errors import ConfigError
from engine.evaluation import bootstrap, metrics, predictions
from engine.labels import LABELS
from engine.models.chexnet import build_model, losses
from engine.training.trainer import plateau_scheduler
from tests.conftest import ROOT, chexui, events_of, only_run, run_tiny

STUDY = sorted((ROOT / "presets" / "study").glob("*.toml"))


def resolved(name: str) -> dict:
    from chexui.presets import resolve

    return resolve(name)


# ------------------------------------------------------------------ LR plateau (Keras semantics)


def keras_reduce_lr_epochs(losses_, patience, factor, min_delta, lr, min_lr=0.0):
    """Keras 2.3's ReduceLROnPlateau (mode "min", cooldown 0), as its source reads: the epochs (1-based)
    at which it cuts the LR."""
    best, wait, cuts = math.inf, 0, []
    for epoch, current in enumerate(losses_, start=1):
        if current < best - min_delta:
            best, wait = current, 0
        else:
            wait += 1
            if wait >= patience:
                if lr > min_lr:
                    lr = max(lr * factor, min_lr)
                    cuts.append(epoch)
                wait = 0
    return cuts


def torch_cut_epochs(losses_, t):
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=t["lr"])
    sched, cuts = plateau_scheduler(opt, t), []
    for epoch, v in enumerate(losses_, start=1):
        before = opt.param_groups[0]["lr"]
        sched.step(v)
        if opt.param_groups[0]["lr"] < before:
            cuts.append(epoch)
    return cuts


@pytest.mark.parametrize("patience", [0, 1, 2, 5, 10])
def test_lr_is_cut_at_exactly_the_epoch_keras_cuts_it(patience):
    rng = np.random.default_rng(patience)
    # a falling loss that flattens at epoch 10, with noise below and above the 1e-4 min_delta
    seq = list(1.0 / np.arange(1, 11)) + list(0.1 + rng.normal(0, 2e-4, 60))
    t = {**config.defaults()["train"], "plateau_patience": patience, "plateau_min_delta": 1e-4, "min_lr": 1e-9}
    want = keras_reduce_lr_epochs(seq, patience, t["plateau_factor"], 1e-4, t["lr"], t["min_lr"])
    assert want and torch_cut_epochs(seq, t) == want


def test_keras_rule_cuts_one_epoch_before_pytorchs_and_min_delta_is_absolute():
    seq = [1.0, 0.9, 0.95, 0.95, 0.95]
    t = {**config.defaults()["train"], "plateau_patience": 2}
    assert torch_cut_epochs(seq, {**t, "plateau_rule": "keras"}) == [4]  # bad epochs 3, 4 reach 2
    assert torch_cut_epochs(seq, {**t, "plateau_rule": "pytorch"}) == [5]  # torch: they must exceed 2
    # steps of 3e-5 at a loss of 0.1: below the absolute min_delta 1e-4 (Keras: no improvement, cut),
    # above torch's relative threshold 1e-4 x 0.1 (improvements, no cut)
    tiny = [0.1, 0.09997, 0.09994, 0.09991]
    assert torch_cut_epochs(tiny, {**t, "plateau_patience": 3}) == [4]
    assert torch_cut_epochs(tiny, {**t, "plateau_patience": 3, "plateau_rule": "pytorch"}) == []
    assert config.defaults()["train"]["plateau_rule"] == "keras"


# ------------------------------------------------------------------ pruning: degree 4, unlisted widths


def tfmot_polynomial_decay(step, begin, end, s_i, s_f, power):
    """TF-MOT's PolynomialDecay.__call__ (step clipped to end_step)."""
    p = (min(step, end) - begin) / (end - begin)
    return (s_i - s_f) * (1 - p) ** power + s_f


def test_schedule_is_tfmot_polynomial_decay_with_power_4():
    assert config.defaults()["prune"]["power"] == 4
    for t, want in ((0, 0.1), (100, 0.3734375), (200, 0.475), (300, 0.4984375), (400, 0.5), (900, 0.5)):
        assert schedule(t, 0, 400, 0.1, 0.5, 4) == pytest.approx(want, abs=1e-12)
    for t in (50, 51, 123, 375, 699, 700):
        assert schedule(t, 50, 700, 0.1, 0.7, 4) == pytest.approx(tfmot_polynomial_decay(t, 50, 700, 0.1, 0.7, 4))
    for f in STUDY:
        cfg = resolved(str(f)) if not f.name.endswith(".sweep.toml") else None
        if cfg and cfg["prune"]["enabled"]:
            assert cfg["prune"]["power"] == 4, f.name


def _prune_cfg(**kw):
    return {
        **config.defaults()["prune"],
        "enabled": True,
        "begin_epoch": 0.0,
        "end_epoch": 1.0,
        "frequency_steps": 1,
        "final_sparsity": 0.7,
        "adaptive": [{"out_channels": 64, "sparsity": 0.25}],
        **kw,
    }


@pytest.mark.parametrize("default,unlisted", [("keep", 0.0), ("final", 0.7), (0.3, 0.3)])
def test_unlisted_widths_follow_adaptive_default(default, unlisted):
    model = build_model("resnet18", "none")  # widths 64, 128, 256, 512: only 64 is listed
    p = Pruner(model, _prune_cfg(adaptive_default=default), steps_per_epoch=2)
    for step in (1, 2, 3):
        p.step(step)
    for name, info in p.layer_sparsity().items():
        want = 0.25 if info["out_channels"] == 64 else unlisted
        assert abs(info["sparsity"] - want) <= 0.005, (name, info)


def test_adaptive_default_values_are_checked():
    for bad in ("maybe", 1.5, -0.1, True):
        with pytest.raises(ConfigError, match="prune.adaptive_default"):
            config.validate({"prune": {"adaptive_default": bad}}, "p.toml")
    assert config.validate({"prune": {"adaptive_default": "keep"}})["prune"]["adaptive_default"] == "keep"


def test_study_presets_set_the_study_behaviour():
    for f in STUDY:
        if f.name.endswith(".sweep.toml"):
            continue
        cfg = resolved(str(f))
        t, p = cfg["train"], cfg["prune"]
        assert (t["plateau_rule"], t["plateau_min_delta"], t["val_loss"]) == ("keras", 1e-4, "unweighted"), f.name
        assert cfg["model"]["weights"] == "IMAGENET1K_V1", f.name
        if p["enabled"]:
            assert p["best_from"] == "start", f.name
        if p["adaptive"]:
            assert p["adaptive_default"] == "keep", f.name
        if cfg["quantize"]["enabled"]:
            assert cfg["quantize"]["freeze_observers_epoch"] == cfg["quantize"]["freeze_bn_epoch"] == 0
    # the other choice ships too: the built-in adaptive presets prune the unlisted widths
    assert resolved("prune-adaptive")["prune"]["adaptive_default"] == 0.5
    assert resolved("resnet50-prune-adaptive")["prune"]["adaptive_default"] == 0.325


# ------------------------------------------------------------------ weights and validation loss


def test_model_weights_are_named_and_checked_against_torchvision():
    from torchvision import models

    from engine.models import archs

    for arch in archs.all_archs():  # the architecture table's weight names are torchvision's
        assert set(arch.weights) <= set(models.get_model_weights(arch.torchvision).__members__), arch.name
    assert set(archs.get("resnet50").weights) == {"IMAGENET1K_V1", "IMAGENET1K_V2"}
    config.validate({"model": {"arch": "resnet50", "weights": "IMAGENET1K_V2"}})
    with pytest.raises(ConfigError, match="model.weights.*densenet121"):
        config.validate({"model": {"arch": "densenet121", "weights": "IMAGENET1K_V2"}}, "p.toml")
    assert config.defaults()["model"]["weights"] == "IMAGENET1K_V1"


def test_offline_imagenet_message_names_the_chosen_weights_file():
    from torchvision import models

    url = models.ResNet50_Weights.IMAGENET1K_V1.url
    if (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).exists():
        pytest.skip("the V1 weights are cached: the offline path cannot be exercised")
    with pytest.raises(ConfigError) as e:
        build_model("resnet50", "imagenet", "IMAGENET1K_V1")
    assert url in str(e.value) and "IMAGENET1K_V1" in str(e.value)


def test_unweighted_validation_loss_is_plain_bce_while_training_stays_weighted():
    pos, neg = np.arange(1, 15) * 10, np.full(14, 1000)
    logits, y = torch.randn(64, 14), (torch.rand(64, 14) < 0.2).float()
    t = config.defaults()["train"]
    train, val = losses({**t, "val_loss": "unweighted"}, pos, neg)
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert float(val(logits, y)) == pytest.approx(float(plain), rel=1e-6)
    assert abs(float(train(logits, y)) - float(plain)) > 1e-3
    train, val = losses({**t, "val_loss": "same"}, pos, neg)
    assert val is train


# ------------------------------------------------------------------ QAT


@pytest.mark.slow
def test_evaluating_keeps_observers_that_were_frozen():
    from engine.compression import quant

    q = {**config.defaults()["quantize"], "enabled": True}
    qat = quant.prepare(build_model("resnet18", "none"), q, 32)
    fqs = quant._fake_quants(qat).values()
    with quant.observers_frozen(qat):
        assert all(int(f.observer_enabled) == 0 for f in fqs)
    assert all(int(f.observer_enabled) == 1 for f in fqs)  # training observers resume
    quant.freeze_observers(qat)
    with quant.observers_frozen(qat):
        pass
    assert all(int(f.observer_enabled) == 0 for f in fqs)  # a frozen range stays frozen
    assert quant.bit_widths(qat)["activation_bits"] == [8] and quant.bit_widths(qat)["weight_bits"] == [8]


def test_the_removed_fx_engine_and_its_batchnorm_freezing_are_refused_saying_why():
    """torch.ao's FX engine (its int8 artifact a TorchScript program, its QAT runs broken at the end) is
    gone: a preset that still asks for it, or for its BatchNorm freezing, is a config error naming the key."""
    with pytest.raises(ConfigError, match=r"p.toml: key 'quantize.engine' = 'fx'.*FX engine was removed"):
        config.validate({"quantize": {"enabled": True, "engine": "fx"}}, "p.toml")
    with pytest.raises(ConfigError, match=r"key 'quantize.freeze_bn_epoch' = 3.*removed"):
        config.validate({"quantize": {"enabled": True, "freeze_bn_epoch": 3}}, "p.toml")
    assert config.validate({"quantize": {"enabled": True, "freeze_bn_epoch": 0}})["quantize"]["engine"] == "pt2e"


@pytest.mark.slow
def test_qat_run_freezes_reports_bits_and_eval_measures_what_it_ships(compressed_run, tiny_demo):
    run, _ = compressed_run  # PT2E QAT of all layers, observers frozen after epoch 2
    ev = events_of(run)
    started = next(e for e in ev if e["type"] == "run_started")
    assert started["quantization"]["activation_bits"] == [8] and started["quantization"]["weight_bits"] == [8]
    ck = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    flags = [v for k, v in ck["qat"].items() if k.endswith("observer_enabled")]
    assert flags and all(int(f) == 0 for f in flags)
    r = chexui("eval", str(run), "--data", tiny_demo, "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    names = [m["model"] for m in res["models"]]
    assert names[0].startswith("int8 artifact export/model_int8.pt2 (its graph, as kept in checkpoints/best.pt)")
    assert "fake-quantized" in names[1]
    assert res["model"] == names[0] and res["auc"] == res["models"][0]["auc"]
    # on the run's own test split, eval's headline is the run's own (`test`: the int8 model it ships, which
    # `runs show` reports too), and the fake-quantized model scores what the run recorded for it
    # (`test_qat`), each label to 1e-6
    heads = {s: next(e for e in ev if e["type"] == "evaluated" and e["split"] == s) for s in ("test", "test_qat")}
    for m, split in zip(res["models"], ("test", "test_qat")):
        assert m["auc_mean"] == pytest.approx(heads[split]["auc_mean"], abs=1e-6)
        assert all(abs(m["auc"][k] - v) <= 1e-6 for k, v in heads[split]["auc"].items() if v is not None)
    show = json.loads(chexui("runs", "show", str(run), "--json").stdout)
    assert show["test_auc"] == pytest.approx(res["auc_mean"], abs=1e-6) and "int8" in show["test_model"]
    # eval's QAT stand-in is built as the run's (one builder, the run's memory layout and batch): its
    # probabilities are the run's kept ones
    from engine import config as cfg_mod
    from engine.data import nih
    from engine.data.batches import Images
    from engine.data.cache import prepare
    from engine.evaluation.evaluate import eval_batch_size, predict_logits, probabilities, shipped_models
    from engine.runtime.dist import Dist

    cfg = cfg_mod.load_run_config(run / "config.toml")
    kept = predictions.load(run / "predictions" / "test_qat.npz")
    index = nih.index_dataset(tiny_demo)
    rows = np.array([list(index.names).index(n) for n in kept["image_ids"]])
    twin = shipped_models(run, cfg)[1][1]
    logits = predict_logits(
        twin, Images(index, 32, prepare(index, 32)), rows, Dist(), eval_batch_size(cfg), cfg["train"]["channels_last"]
    )
    assert np.abs(probabilities(logits) - kept["probs"]).max() <= 1e-6
    assert all(m["auc_mean_ci"][0] <= m["auc_mean"] <= m["auc_mean_ci"][1] for m in res["models"])
    # the human table of each model (what `chexui eval` prints): CIs and the calls at the run's thresholds
    from rich.console import Console

    from chexui.headless import auc_table

    con = Console(record=True, width=140)
    for m in res["models"]:
        con.print(auc_table(m, m["model"]))
    shown = con.export_text()
    assert "int8 artifact" in shown and "fake-quantized" in shown and "95% CI" in shown and "sensitivity" in shown


# ------------------------------------------------------------------ kept predictions, CIs, labels in a mean


@pytest.mark.slow
def test_every_evaluation_keeps_its_predictions_and_carries_patient_bootstrap_cis(compressed_run):
    run, _ = compressed_run
    split = json.loads((run / "split.json").read_text())
    evals = [e for e in events_of(run) if e["type"] == "evaluated"]
    assert {e["split"] for e in evals} == {
        "test",
        "test_qat",
        "test_fp32",
        "test_sparse",
        "test_onnx_fp32",
        "test_onnx_int8",
    }
    for e in evals:
        p = predictions.load(run / e["predictions"])
        assert len(p["image_ids"]) == e["n"] == len(split["test"])
        assert list(p["image_ids"]) == split["test"]  # the split's images, in its order
        aucs, mean, _ = metrics.per_class_auroc(p["labels"], p["probs"])
        assert aucs == pytest.approx(e["auc"]) and mean == pytest.approx(e["auc_mean"], abs=1e-12)
        assert e["n_labels_defined"] == sum(v is not None for v in e["auc"].values())
        assert e["bootstrap"]["unit"] == "patient" and e["bootstrap"]["resamples"] == 1000
        for name, ci in e["auc_ci"].items():  # no CI: no AUROC, or a reason (too few patients)
            assert ci is not None or e["auc"][name] is None or "patients" in e["auc_ci_note"][name], name
            assert ci is None or e["auc_ci_dropped"][name] < 0.8 * 1000
        lo, hi = e["auc_mean_ci"]
        assert lo <= e["auc_mean"] <= hi and 0 <= e["auc_mean_ci_dropped"] <= 0.8 * 1000


def test_headless_table_says_how_many_labels_a_mean_covers():
    from chexui.headless import auc_table, console

    aucs = {name: 0.8 for name in LABELS} | {"Hernia": None, "Edema": None}
    con = console()
    with con.capture() as cap:
        con.print(
            auc_table(
                {"auc": aucs, "auc_mean": 0.8, "auc_mean_ci": [0.75, 0.85], "auc_ci": {n: [0.7, 0.9] for n in LABELS}},
                "test",
            )
        )
    out = cap.get()
    assert "mean of 12/14 labels" in out and "0.750-0.850" in out


# ------------------------------------------------------------------ the bootstrap itself


def clustered(n_patients: int, rng, d=1.0, images=3, sigma_u=1.0):
    """Patients with a label each (shared by their images) and a patient effect on every score: the
    population AUROC is Phi(d / sqrt(2 (sigma_u^2 + 1))) for each of the 14 labels."""
    counts = rng.integers(1, 2 * images, n_patients)
    pat = np.repeat(np.arange(n_patients), counts)
    prev = np.linspace(0.05, 0.4, len(LABELS))
    z = (rng.random((n_patients, len(LABELS))) < prev).astype(np.uint8)
    y = z[pat]
    u = rng.normal(0, sigma_u, (n_patients, len(LABELS)))[pat]
    scores = d * y + u + rng.normal(0, 1, y.shape)
    return y, scores, pat


def true_auc(d=1.0, sigma_u=1.0):
    x = d / math.sqrt(2 * (sigma_u**2 + 1))
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))  # the standard normal CDF at x


def test_weighted_replicates_equal_sklearn_on_the_explicitly_resampled_images():
    rng = np.random.default_rng(3)
    y, s, pat = clustered(40, rng)
    s = np.round(s, 1)  # ties, counted half as sklearn does
    spec = bootstrap.Spec(resamples=5, seed=11)
    reps = bootstrap.replicates(y, [s], pat, spec)[0]
    codes, counts = bootstrap.patient_counts(pat, spec.resamples, spec.seed)
    for b in range(spec.resamples):
        idx = np.repeat(np.arange(len(pat)), counts[b, codes].astype(int))
        for j in range(len(LABELS)):
            if 0 < y[idx, j].sum() < len(idx):
                assert reps[b, j] == pytest.approx(roc_auc_score(y[idx, j], s[idx, j]), abs=1e-9)
            else:
                assert np.isnan(reps[b, j])


@pytest.mark.slow
def test_mean_auroc_ci_covers_the_population_value_about_95_percent_of_the_time():
    truth = true_auc()
    covered = 0
    for draw in range(100):
        y, s, pat = clustered(150, np.random.default_rng(1000 + draw))
        aucs = metrics.per_class_auroc(y, s)[0]
        lo, hi = bootstrap.intervals(y, s, pat, aucs, bootstrap.Spec(200, draw))["auc_mean_ci"]
        covered += lo <= truth <= hi
    assert covered >= 90, covered


def test_ci_width_shrinks_as_one_over_sqrt_patients():
    def width(n):
        ws = []
        for k in range(4):
            y, s, pat = clustered(n, np.random.default_rng(50 + k))
            lo, hi = bootstrap.intervals(y, s, pat, metrics.per_class_auroc(y, s)[0], bootstrap.Spec(300, k))[
                "auc_mean_ci"
            ]
            ws.append(hi - lo)
        return np.mean(ws)

    ratio = width(200) / width(800)
    assert 1.6 <= ratio <= 2.5, ratio  # 4x the patients: about half the width


def test_paired_identical_runs_differ_by_zero_with_p_1_and_a_shuffled_model_by_p_below_001():
    rng = np.random.default_rng(7)
    y, s, pat = clustered(300, rng, d=1.5)
    aucs = metrics.per_class_auroc(y, s)[0]
    same = bootstrap.paired(y, s, s.copy(), pat, aucs, aucs, bootstrap.Spec(1000, 0))
    assert same["mean"]["delta"] == 0 and same["mean"]["p"] == 1 and same["mean"]["ci"] == [0, 0]
    assert all(r["delta"] == 0 and r["p"] == 1 for r in same["labels"].values())
    shuffled = s[rng.permutation(len(s))]  # the model's scores on label-shuffled images: chance
    res = bootstrap.paired(y, s, shuffled, pat, aucs, metrics.per_class_auroc(y, shuffled)[0], bootstrap.Spec(1000, 0))
    assert res["mean"]["ci"][1] < 0 and res["mean"]["n_labels"] == 14
    # no resample came out on the other side of 0: p is 1/(R + 1), not 0 (R resamples cannot show less)
    assert res["mean"]["p"] == pytest.approx(1 / 1001)
    from chexui.compare import _p_text

    assert _p_text(res["mean"]["p"]) == "p<0.001" and _p_text(0.0521) == "p=0.052"


def test_the_p_value_and_the_ci_come_from_one_rule_and_never_disagree():
    """p <= 0.05 exactly when the 95 % CI excludes 0, for any replicates (interpolated percentiles once
    gave p = 0.052 with a CI excluding 0), including replicates some of which are undefined (NaN)."""
    rng = np.random.default_rng(0)
    checked = 0
    for k in range(2000):
        d = rng.normal(rng.uniform(0, 0.05), 0.02, int(rng.integers(40, 1200)))
        d[rng.random(len(d)) < rng.uniform(0, 0.3)] = np.nan
        ci, p = bootstrap._interval(d), bootstrap._p_value(d)
        if ci is None:
            assert p is None
            continue
        checked += 1
        assert (p <= 0.05) == (ci[0] > 0 or ci[1] < 0), (p, ci, k)
    assert checked > 1500


def test_the_mean_averages_the_same_labels_in_every_resample_and_counts_the_others():
    """A resample that lost every positive of a label has no mean (it would average fewer labels:
    seen, a mean delta of -0.145 with a CI of -0.199 to +0.094); such resamples are counted, and a label
    with positives from fewer than 3 patients gets no CI, saying why."""
    rng = np.random.default_rng(5)
    y, s, pat = clustered(60, rng)
    y[:, 13] = 0
    y[pat == pat[0], 13] = 1  # Hernia: the images of one patient only
    y[pat == pat[-1], 13] = 1  # ... and of a second one
    aucs = metrics.per_class_auroc(y, s)[0]
    res = bootstrap.intervals(y, s, pat, aucs, bootstrap.Spec(500, 1))
    assert res["auc_ci"]["Hernia"] is None and "positives from 2" in res["auc_ci_note"]["Hernia"]
    reps = bootstrap.replicates(y, [s], pat, bootstrap.Spec(500, 1))[0]
    usable = np.isfinite(reps).all(axis=1)
    assert 0 < res["auc_mean_ci_dropped"] == int((~usable).sum())  # (two Hernia patients: often both missed)
    v = np.sort(reps[usable].mean(axis=1))  # the mean of all 14 labels, in the usable resamples only
    k = int(np.floor(0.025 * len(v)))
    assert res["auc_mean_ci"] == [pytest.approx(v[k]), pytest.approx(v[len(v) - 1 - k])]
    s2 = s + rng.normal(0, 0.5, s.shape)
    pr = bootstrap.paired(y, s, s2, pat, aucs, metrics.per_class_auroc(y, s2)[0], bootstrap.Spec(500, 1))
    assert pr["labels"]["Hernia"]["ci"] is None and "patients" in pr["labels"]["Hernia"]["note"]
    assert pr["mean"]["dropped"] == res["auc_mean_ci_dropped"]


def test_holm_adjusts_a_family_of_p_values():
    assert bootstrap.holm([0.01, None, 0.04, 0.03, 0.005]) == pytest.approx([0.03, None, 0.06, 0.06, 0.02])
    assert bootstrap.holm([None, None]) == [None, None] and bootstrap.holm([0.5]) == [0.5]


# ------------------------------------------------------------------ a pruned run's best epoch; paired compare


@pytest.mark.slow
def test_best_from_start_lets_a_mid_schedule_epoch_be_best_and_compare_pairs_runs(
    tmp_path, tiny_preset, compressed_run
):
    runs = tmp_path / "runs"
    r, ev = run_tiny(
        runs,
        tiny_preset,
        "prune.enabled=true",
        "prune.end_epoch=2.0",
        "prune.best_from=start",
        "train.val_loss=unweighted",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # epoch 1 always improves on no best: with best_from = "start" it is saved as best mid-schedule
    best = [e["epoch"] for e in ev if e["type"] == "checkpoint_saved" and e["best"]]
    sparsity = {e["epoch"]: e["sparsity"] for e in ev if e["type"] == "epoch_ended"}
    assert best[0] == 1 and sparsity[1] < 0.5
    run = only_run(runs)
    # the same split as the shared compressed run (same data and split keys): paired differences
    other = compressed_run[0]
    out = json.loads(chexui("compare", str(other), str(run), "--baseline", str(run), "--format", "json").stdout)
    paired = out["paired"]
    assert paired["notes"] == [] and paired["bootstrap"]["unit"] == "patient"
    [(label, rows)] = paired["runs"].items()
    mean = rows["mean"]
    assert mean["ci_lo"] <= mean["delta"] <= mean["ci_hi"] and 0 <= mean["p"] <= 1
    tests = {e["split"]: e for e in events_of(other) if e["type"] == "evaluated"}
    mine = next(e for e in ev if e["type"] == "evaluated" and e["split"] == "test")
    assert mean["delta"] == pytest.approx(tests["test"]["auc_mean"] - mine["auc_mean"], abs=1e-9)
    # a run against itself: difference 0, p = 1
    same = json.loads(chexui("compare", str(run), str(run), "--format", "json").stdout)["paired"]
    [(_, rows)] = same["runs"].items()
    assert rows["mean"]["delta"] == 0 and rows["mean"]["p"] == 1
    table = chexui("compare", str(other), str(run), "--baseline", str(run)).stdout
    assert "Paired difference" in table and "bootstrap" in table
