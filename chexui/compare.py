"""Study-style tables across runs (pandas), read from each run's config and event stream.

- AUROC: the 14 labels + mean, one column per run, labelled by the config keys that differ between the
  runs (`LR=0.001 B=64`), and the CheXNet paper's published AUROC as a reference column.
- training time: parent run (post-training compression), processes, epochs, total hours, compute hours
  with the parent's training, hours per epoch, training images/s.
- storage: parameters, nonzero parameters, GMACs of one image, and the bytes and gzip bytes of each
  exported artifact.
- paired: each run against a baseline run evaluated on the same test split (same split sha256):
  the difference in test AUROC per class and of the mean, with its paired patient-bootstrap 95 % CI
  and p-value, from the runs' saved predictions (predictions/test.npz). Runs on other splits are left
  out of it, with a note saying why.
- heatmaps (opt-in, `--heatmaps N`: it runs the models): on N seeded test images of the baseline,
  each run's shipped model's Grad-CAM agreement with the baseline's (Pearson r, top-10 % IoU) for the
  baseline's top-3 labels, beside the mean AUROC difference, and on a demo set how often the map's
  peak falls in the drawn finding (engine.inference.explain.sample_agreement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexui.format import compression_text, csv_cell, n_defined, short_key, value_text
from chexui.runs import RunInfo
from engine import config, rundir
from engine.errors import UserError
from engine.evaluation import bootstrap, metrics, predictions
from engine.events import ARTIFACT_SPLITS
from engine.labels import CHEXNET_AUROC, LABELS

REFERENCE = "CheXNet (paper; official NIH split: other test images)"
SEED_KEY = "train.seed"  # runs that differ only by it are one arm (`arms`)
# keys that say nothing about the experiment
IGNORED = {"name", "description", "sweep", "data.workers", "export.enabled", "compress.parent"}


IMPLIED_BY_PARENT = {"train.epochs", "train.lr", "model.pretrained"}  # a compress run sets these from --options
FROM_THE_PARENT = {"train.lr", "model.pretrained"}  # ... of which these vary with the parent (its last LR)


def _config(r: RunInfo) -> dict:
    return r.state.config


def arms(runs: list[RunInfo]) -> list[list[int]]:
    """The runs grouped into arms: runs whose configs differ only by the training seed (train.seed; and
    for post-training runs, what each takes from its own parent: that parent's last LR) are repeats of
    one method. Runs with the same seed too (a run given twice, a rerun) are not seeds of one arm: each
    repeat starts an arm of its own. In the order the runs come."""
    groups: dict[tuple[str, int], list[int]] = {}
    seeds: dict[tuple[str, int], set] = {}
    for i, r in enumerate(runs):
        flat = config.flatten(_config(r))
        after = bool(flat.get("compress.parent"))
        key = json.dumps(
            {
                k: v
                for k, v in flat.items()
                if k not in IGNORED and k != SEED_KEY and not (after and k in FROM_THE_PARENT)
            },
            sort_keys=True,
            default=str,
        )
        n = 0
        while (key, n) in seeds and flat.get(SEED_KEY) in seeds[(key, n)]:
            n += 1
        groups.setdefault((key, n), []).append(i)
        seeds.setdefault((key, n), set()).add(flat.get(SEED_KEY))
    return list(groups.values())


def run_labels(runs: list[RunInfo], ignore: frozenset[str] = frozenset()) -> list[str]:
    """Column labels from what differs between the runs: the compression method in a few words, then
    the other config keys whose values differ (else the run ids); keys in `ignore` never count."""
    cfgs = [_config(r) for r in runs]
    flats = [config.flatten(c) for c in cfgs]
    keys = sorted({k for f in flats for k in f} - IGNORED - set(ignore))
    after = [bool(f.get("compress.parent")) for f in flats]

    def values(k: str) -> set[str]:  # (a compress run's epochs/LR say nothing its method does not)
        return {json.dumps(f.get(k), default=str) for f, a in zip(flats, after) if not (a and k in IMPLIED_BY_PARENT)}

    summed = tuple(f"{section}." for section in config.LABELS)  # the keys `compression_text` sums up
    differ = [k for k in keys if not k.startswith(summed) and len(values(k)) > 1]
    methods = [compression_text(c) for c in cfgs]
    if len(runs) < 2 or not (differ or len(set(methods)) > 1):
        return _unique([r.id for r in runs])
    labels = []
    for f, method, compressed_after in zip(flats, methods, after):
        parts = [method] if len(set(methods)) > 1 else []
        parts += [
            f"{short_key(k)}={value_text(f.get(k))}"
            for k in differ
            if not (compressed_after and k in IMPLIED_BY_PARENT)
        ]
        labels.append(" ".join(parts))
    if len(set(labels)) < len(labels):  # same differing keys (e.g. repeated runs): add the id
        labels = [f"{lab} ({r.id})" for lab, r in zip(labels, runs)]
    return _unique(labels)


def _unique(labels: list[str]) -> list[str]:
    """A run given twice (e.g. against itself) gets "#2" on its second column."""
    seen: dict[str, int] = {}
    out = []
    for lab in labels:
        seen[lab] = seen.get(lab, 0) + 1
        out.append(lab if seen[lab] == 1 else f"{lab} #{seen[lab]}")
    return out


def _test(r: RunInfo, split: str = "test") -> dict | None:
    return r.state.evaluations.get(split)


MEAN_LABELS = "labels in mean"


def _reference_rows() -> list[float]:
    return [CHEXNET_AUROC[name] for name in LABELS] + [sum(CHEXNET_AUROC.values()) / len(LABELS), len(LABELS)]


def auroc_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    """Per-class test AUROC of each run (what it ships), the mean and how many labels it covers; each
    figure's patient-bootstrap 95 % CI in `.attrs["ci"]` ({column: {row: [lo, hi]}})."""
    cols, cis = {}, {}
    for r, lab in zip(runs, labels):
        t = _test(r)
        cols[lab] = [t["auc"].get(name) if t else None for name in LABELS] + [
            t["auc_mean"] if t else None,
            n_defined(t["auc"]) if t else None,
        ]
        cis[lab] = {**((t or {}).get("auc_ci") or {}), "mean": (t or {}).get("auc_mean_ci")}
    cols[REFERENCE] = _reference_rows()
    df = pd.DataFrame(cols, index=[*LABELS, "mean", MEAN_LABELS], dtype="float64")
    df.attrs.update(ci=cis, best_by_val=_best_by_val([[r] for r in runs], labels))
    return df


def arm_auroc_table(runs: list[RunInfo], groups: list[list[int]], labels: list[str]) -> pd.DataFrame:
    """Per-class test AUROC of each arm: the mean over its runs (seeds), their SD in `.attrs["sd"]` and
    how many in `.attrs["seeds"]`."""
    cols, sds, seeds = {}, {}, {}
    for g, lab in zip(groups, labels):
        tests = [t for t in (_test(runs[i]) for i in g) if t]
        per = (
            np.array(
                [
                    [np.nan if t["auc"].get(n) is None else t["auc"][n] for n in LABELS]
                    + [np.nan if t["auc_mean"] is None else t["auc_mean"]]
                    for t in tests
                ],
                dtype=float,
            )
            if tests
            else np.full((1, len(LABELS) + 1), np.nan)
        )
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(per, axis=0) if tests else per[0]
            sd = np.nanstd(per, axis=0, ddof=1) if len(tests) > 1 else np.full(len(mean), np.nan)
        cols[lab] = [*mean, min((n_defined(t["auc"]) for t in tests), default=np.nan)]
        sds[lab], seeds[lab] = [*sd, np.nan], len(tests)
    cols[REFERENCE] = _reference_rows()
    df = pd.DataFrame(cols, index=[*LABELS, "mean", MEAN_LABELS], dtype="float64")
    df.attrs.update(sd=sds, seeds=seeds, best_by_val=_best_by_val([[runs[i] for i in g] for g in groups], labels))
    return df


def _best_by_val(arms_: list[list[RunInfo]], labels: list[str]) -> tuple[str, float] | None:
    """The column whose shipped models score the highest validation AUROC (their best epochs'; the mean
    over an arm's seeds): the best configuration as a study should pick it, never by test AUROC."""
    scores = {}
    for members, lab in zip(arms_, labels):
        vals = [v for v in (r.summary()["best_val_auc"] for r in members) if v is not None]
        if vals:
            scores[lab] = float(np.mean(vals))
    if len(scores) < 2:
        return None
    best = max(scores, key=lambda k: scores[k])
    return best, scores[best]


def auroc_caption(df: pd.DataFrame) -> str:
    parts = []
    if "sd" in df.attrs:
        parts.append(
            "Each arm: the mean test AUROC over its runs, which differ only by train.seed (± their SD; "
            "the number of seeds beside its name)."
        )
    else:
        parts.append("Each run's test AUROC with its patient-bootstrap 95% CI.")
    parts.append(f"{REFERENCE}: the published figures, on another test split (not comparable image by image).")
    best = df.attrs.get("best_by_val")
    if best:
        parts.append(
            f"Best configuration by validation AUROC (the shipped epoch's): {best[0]} ({best[1]:.4f}); "
            "chosen on validation, never on test."
        )
    return "\n".join(parts)


def _split_sha(r: RunInfo) -> str | None:
    return (r.state.started.get("dataset") or {}).get("split_sha256")


def _predictions(r: RunInfo) -> dict:
    return predictions.load(predictions.path_for(r.run_dir, "test"))


def _unpaired(base: RunInfo, r: RunInfo) -> str | None:
    """Why `r` cannot be paired with the baseline, or None."""
    if _test(base) is None or _test(r) is None:
        return "no test evaluation (the run did not complete)"
    if _split_sha(base) != _split_sha(r) or _split_sha(r) is None:
        return "evaluated on a different test split (split sha256 differs), so its images are not the baseline's"
    return None


PAIRED_COLUMNS = ["run", "label", "delta", "ci_lo", "ci_hi", "p", "p_holm", "distinguishable", "dropped", "note"]


def _paired_rows(lab: str, res: dict) -> list[dict]:
    """One comparison's rows: per label with Holm's adjustment over the labels (the family), then the
    mean (one test: its own p). `distinguishable`: the adjusted p (the mean's p) <= 0.05."""
    names = list(res["labels"])
    adjusted = dict(zip(names, bootstrap.holm([res["labels"][n]["p"] for n in names])))
    rows = []
    for name, d in [*res["labels"].items(), ("mean", res["mean"])]:
        lo, hi = d["ci"] or (None, None)
        p_holm = d["p"] if name == "mean" else adjusted[name]
        rows.append(
            {
                "run": lab,
                "label": name,
                "delta": d["delta"],
                "ci_lo": lo,
                "ci_hi": hi,
                "p": d["p"],
                "p_holm": p_holm,
                "distinguishable": None if p_holm is None else bool(p_holm <= 0.05),
                "dropped": d.get("dropped"),
                "note": d.get("note"),
            }
        )
    return rows


def paired_table(runs: list[RunInfo], labels: list[str], base: int) -> pd.DataFrame:
    """Rows (run, label): B minus the baseline A, its paired 95 % CI, p-value and Holm-adjusted p. The
    bootstrap resamples the same patients for both runs (the baseline's recorded resamples and seed).
    `.attrs`: the baseline's label and the notes on runs left out."""
    a, rows, notes = runs[base], [], []
    spec = _spec(a)
    pa: dict | None = None
    for i, (r, lab) in enumerate(zip(runs, labels)):
        if i == base:
            continue
        why = _unpaired(a, r)
        if why is None:
            try:
                pa = pa or _predictions(a)
                pb = _predictions(r)
            except UserError as e:
                why = f"no saved predictions ({e})"
        if why is None and pa is not None and not np.array_equal(pa["image_ids"], pb["image_ids"]):
            why = "its saved predictions are for other images than the baseline's"
        if why is not None or pa is None:
            notes.append(f"{lab}: not compared with the baseline: {why}")
            continue
        y = pa["labels"]
        aucs_a = metrics.per_class_auroc(y, pa["probs"])[0]
        aucs_b = metrics.per_class_auroc(y, pb["probs"])[0]
        rows += _paired_rows(
            lab, bootstrap.paired(y, pa["probs"], pb["probs"], pa["patient_ids"], aucs_a, aucs_b, spec)
        )
    df = pd.DataFrame(rows, columns=PAIRED_COLUMNS).set_index(["run", "label"])
    df.attrs.update(baseline=labels[base], notes=notes, bootstrap=spec.record(), unit="run")
    return df


def _spec(r: RunInfo) -> bootstrap.Spec:
    return bootstrap.Spec(
        **{k: v for k, v in ((_test(r) or {}).get("bootstrap") or {}).items() if k in ("resamples", "seed")}
    )


def arm_paired_table(runs: list[RunInfo], groups: list[list[int]], labels: list[str], base: int) -> pd.DataFrame:
    """Rows (arm, label): arm B minus the baseline arm A (mean over each arm's seeds), its 95 % CI and
    p-value from a hierarchical bootstrap (patients, then seeds within each arm: `bootstrap.paired_arms`),
    and Holm-adjusted p. Runs of an arm that cannot be paired with the baseline arm's first run are left
    out, with a note."""
    ref = runs[groups[base][0]]
    spec, notes, rows = _spec(ref), [], []
    p_ref: dict | None = None
    try:
        p_ref = _predictions(ref)
    except UserError as e:
        notes = [f"the baseline has no saved predictions ({e})"]

    def usable(g: list[int], lab: str) -> list[np.ndarray]:
        out = []
        for i in g:
            why = _unpaired(ref, runs[i])
            if why is None:
                try:
                    p = _predictions(runs[i])
                    why = (
                        None
                        if p_ref is not None and np.array_equal(p["image_ids"], p_ref["image_ids"])
                        else "other images than the baseline's"
                    )
                except UserError as e:
                    why = f"no saved predictions ({e})"
            if why is None:
                out.append(p["probs"])
            else:
                notes.append(f"{lab}: run {runs[i].id} left out: {why}")
        return out

    if p_ref is not None:
        base_probs = usable(groups[base], labels[base])
        for k, (g, lab) in enumerate(zip(groups, labels)):
            if k == base:
                continue
            probs = usable(g, lab)
            if probs and base_probs:
                res = bootstrap.paired_arms(p_ref["labels"], base_probs, probs, p_ref["patient_ids"], spec)
                rows += _paired_rows(lab, res)
    df = pd.DataFrame(rows, columns=PAIRED_COLUMNS).set_index(["run", "label"])
    df.attrs.update(
        baseline=labels[base],
        notes=notes,
        unit="arm",
        bootstrap={**spec.record(), "unit": "patient, then seed within each arm"},
        seeds={lab: len(g) for g, lab in zip(groups, labels)},
    )
    return df


def time_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    rows = []
    for r, lab in zip(runs, labels):
        st = r.state
        epochs, done = st.epochs, st.finished or {}
        total = done.get("total_time_s")
        # a post-training compression run: its parent's training time counts toward its compute
        parent = r.state.started.get("parent") or {}
        compute = total + (parent.get("total_time_s") or 0) if total is not None else None
        rows.append(
            {
                "run": lab,
                "status": r.status,
                "parent": parent.get("run_id"),
                "processes": st.world_size,
                "epochs": len(epochs),
                "best epoch": st.best_epoch,
                "total h": total / 3600 if total is not None else None,
                "compute h (with parent)": compute / 3600 if compute is not None else None,
                "h / epoch": sum(e["epoch_time_s"] for e in epochs) / len(epochs) / 3600 if epochs else None,
                "train images/s": sum(e["images_per_s"] for e in epochs) / len(epochs) if epochs else None,
            }
        )
    df = pd.DataFrame(rows).set_index("run")
    df.attrs["notes"] = parent_notes(runs, labels)
    return df


def parent_notes(runs: list[RunInfo], labels: list[str]) -> list[str]:
    """A post-training run's parent whose best.pt is no longer the model the run started from (the parent
    was resumed or retrained since): the comparison is then with another model than the one compressed."""
    from engine.fsutil import sha256

    notes = []
    for r, lab in zip(runs, labels):
        parent = r.state.started.get("parent") or {}
        best = Path(str(parent.get("path", ""))) / rundir.BEST
        if parent.get("best_sha256") and best.is_file() and sha256(best) != parent["best_sha256"]:
            notes.append(
                f"{lab}: its parent {parent.get('run_id')}'s best.pt has changed since this run started "
                "from it (sha256 differs): the parent now holds another model than the one compressed"
            )
    return notes


def time_caption(df: pd.DataFrame) -> str:
    return "\n".join(df.attrs.get("notes") or [])


def storage_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    rows, cis = [], {}
    for r, lab in zip(runs, labels):
        ex = r.last("exported") or {}
        row: dict[str, Any] = {
            "run": lab,
            "parameters": ex.get("parameters") or r.state.started.get("parameters"),
            "nonzero": ex.get("nonzero_parameters"),
            # zeros over the pruned layers' weights (the pruning target's measure)
            "sparsity": ex.get("sparsity"),
        }
        arts = {a["kind"]: a for a in ex.get("artifacts", [])}
        # multiply-accumulates of one image through the shipped model (channel pruning lowers them;
        # zeros and int8 do not): the same for every artifact of a run
        row["GMACs"] = next((a["macs"] / 1e9 for a in arts.values() if isinstance(a.get("macs"), int)), None)
        for kind in ARTIFACT_SPLITS:
            a = arts.get(kind)
            row[f"{kind} bytes"] = a["bytes"] if a else None
            row[f"{kind} gzip"] = a["gzip_bytes"] if a else None
            ev = next(filter(None, (_test(r, s) for s in ARTIFACT_SPLITS[kind])), None) if a else None
            row[f"{kind} AUROC"] = ev["auc_mean"] if ev else None
            cis[(lab, f"{kind} AUROC")] = (ev or {}).get("auc_mean_ci")
        rows.append(row)
    df = pd.DataFrame(rows).set_index("run").astype("Float64")
    # ONNX columns only where some run has ONNX files (runs exported before ONNX, or without the extra)
    onnx = [c for c in df.columns if c.startswith("onnx_") and df[c.split(" ")[0] + " bytes"].isna().all()]
    df = df.drop(columns=onnx)
    df.attrs["ci"] = cis  # {(run, column): [lo, hi]}: each artifact's test AUROC with its 95 % CI
    df.attrs["notes"] = sparsity_notes(runs, labels)
    return df


def sparsity_notes(runs: list[RunInfo], labels: list[str]) -> list[str]:
    """Runs that ship a model pruned less than their target: gradual pruning whose best epoch (allowed
    mid-schedule by prune.best_from = "start", the study's Keras rule) came before the schedule ended."""
    notes = []
    for r, lab in zip(runs, labels):
        p = _config(r).get("prune") or {}
        best = r.state.best_epoch
        if (
            p.get("enabled")
            and p.get("schedule", "gradual") == "gradual"
            and best is not None
            and isinstance(p.get("end_epoch"), (int, float))
            and best < p["end_epoch"]
        ):
            shipped = (r.last("exported") or {}).get("sparsity")
            notes.append(
                f"{lab}: ships epoch {best}, before its pruning schedule reached the final sparsity "
                f"(epoch {p['end_epoch']:g})"
                + (f": sparsity {shipped:.3f}" if shipped is not None else "")
                + "; a post-training row prunes to the target at once"
            )
    return notes


def storage_caption(df: pd.DataFrame) -> str:
    return "\n".join(
        ["AUROC columns: each artifact's test AUROC with its patient-bootstrap 95% CI."]
        + list(df.attrs.get("notes") or [])
    )


def heatmap_table(runs: list[RunInfo], labels: list[str], base: int, n_images: int, seed: int = 0) -> pd.DataFrame:
    """Rows (run, model): Grad-CAM agreement with the baseline on a seeded sample of its test images."""
    from engine.inference.explain import sample_agreement

    others = [i for i in range(len(runs)) if i != base]
    by_id = {runs[i].run_dir.name: labels[i] for i in [base, *others]}
    recs = sample_agreement(runs[base].run_dir, [runs[i].run_dir for i in others], n_images, seed)
    aucs = {lab: (_test(r) or {}).get("auc_mean") for r, lab in zip(runs, labels)}
    rows, notes = [], []
    for rec in recs:
        lab = by_id[rec["run"]]
        if rec.get("skipped"):
            notes.append(
                f"none computed: {rec['skipped']}" if lab == labels[base] else f"{lab}: not compared: {rec['skipped']}"
            )
            continue
        mine, theirs = aucs[lab], aucs[labels[base]]
        delta = None if rec["model"] == "baseline" or mine is None or theirs is None else mine - theirs
        rows.append(
            {
                "run": lab,
                "model": rec["model"],
                "images": rec["images"],
                "maps": rec["maps"],
                "maps compared": rec.get("compared"),
                "mean AUROC - baseline": delta,
                "r (Pearson)": rec["pearson"],
                "top-10% IoU": rec["top_iou"],
                "peak in drawn finding": rec["peak_hits"] / rec["peak_maps"] if rec["peak_maps"] else None,
                "peak maps": rec["peak_maps"],
            }
        )
    df = pd.DataFrame(
        rows,
        columns=[
            "run",
            "model",
            "images",
            "maps",
            "maps compared",
            "mean AUROC - baseline",
            "r (Pearson)",
            "top-10% IoU",
            "peak in drawn finding",
            "peak maps",
        ],
    ).set_index(["run", "model"])
    df.attrs.update(baseline=labels[base], notes=notes, seed=seed)
    return df


def heatmap_caption(df: pd.DataFrame) -> str:
    lines = [
        f"Grad-CAM of each run's shipped model (a QAT run: its int8 artifact's fake-quantized twin) against "
        f"the baseline ({df.attrs.get('baseline')}) on the same seeded sample of its test images (seed "
        f"{df.attrs.get('seed')}), for the baseline's 3 most probable labels per image: mean Pearson r of "
        "the maps and mean IoU of their top 10 %, over the 'maps compared' (the pairs neither of which is "
        "flat: all zero after Grad-CAM's ReLU, a map has no region). 'peak in drawn finding': on a chexui "
        "demo set, the share of maps for findings the image shows whose peak lies inside the region the "
        "generator drew ('peak maps' of them)."
    ]
    return "\n".join(lines + list(df.attrs.get("notes") or []))


def tables(runs: list[RunInfo], baseline: int = 0, heatmaps: int = 0) -> dict[str, pd.DataFrame]:
    """The study tables; with `heatmaps` > 0, also Grad-CAM agreement on that many test images. Runs
    that differ only by their seed are pooled into arms for the AUROC and paired tables (mean and SD
    over seeds; a hierarchical bootstrap); time and storage stay one row per run."""
    labels = run_labels(runs)
    groups = arms(runs)
    seeded = any(len(g) > 1 for g in groups)
    if seeded:
        arm_labels = run_labels([runs[g[0]] for g in groups], frozenset({SEED_KEY}))
        arm_labels = [f"{lab} ({len(g)} seeds)" if len(g) > 1 else lab for lab, g in zip(arm_labels, groups)]
        base_arm = next(k for k, g in enumerate(groups) if baseline in g)
        out = {"auroc": arm_auroc_table(runs, groups, arm_labels)}
    else:
        out = {"auroc": auroc_table(runs, labels)}
    out |= {"time": time_table(runs, labels), "storage": storage_table(runs, labels)}
    if len(runs) > 1:
        out["paired"] = (
            arm_paired_table(runs, groups, arm_labels, base_arm) if seeded else paired_table(runs, labels, baseline)
        )
        if heatmaps > 0:
            out["heatmaps"] = heatmap_table(runs, labels, baseline, heatmaps)
    return out


TITLES = {
    "auroc": "Test AUROC per class",
    "time": "Training time",
    "storage": "Storage",
    "paired": "Paired difference in test AUROC against the baseline",
    "heatmaps": "Grad-CAM agreement with the baseline",
}
INDEX = {"auroc": "label", "paired": "label", "heatmaps": "run / model"}


def _p_text(p: float) -> str:
    """A bootstrap p-value: at most 1/(R+1) with R resamples, so with 1,000 "p<0.001" rather than 0."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def paired_display(df: pd.DataFrame) -> pd.DataFrame:
    """One text column per run (or arm): "+0.0123 (-0.0100 to +0.0310) p=0.210", marked * when its
    Holm-adjusted p (the mean: its own p) is <= 0.05."""
    cols = {}
    for run in dict.fromkeys(df.index.get_level_values(0)):
        sub = df.loc[run]
        cols[run] = [
            "-"
            if pd.isna(row.delta)
            else f"{row.delta:+.4f} (no CI: too few patients)"
            if pd.isna(row.ci_lo)
            else f"{row.delta:+.4f} ({row.ci_lo:+.4f} to {row.ci_hi:+.4f}) {_p_text(row.p)}"
            + (" *" if row.distinguishable else "")
            for row in sub.itertuples()
        ]
    return pd.DataFrame(cols, index=[*LABELS, "mean"])


def paired_caption(df: pd.DataFrame) -> str:
    b = df.attrs.get("bootstrap") or {}
    unit = df.attrs.get("unit", "run")
    dropped = [int(v) for v in df["dropped"].dropna()] if "dropped" in df else []
    lines = [
        f"Each {unit} minus the baseline ({df.attrs.get('baseline')}) on the same test images: difference, "
        f"95% CI and two-sided p from {b.get('resamples')} paired bootstrap resamples ({b.get('unit')}; seed "
        f"{b.get('seed')}). The CI and p come from the same sorted replicates, so p <= 0.05 exactly when the "
        "CI excludes 0; p is at least 1/(resamples + 1). * = Holm-adjusted p <= 0.05 over the labels of "
        "that comparison (the mean: its own p); the CIs are not adjusted."
    ]
    if unit == "arm":
        lines.append(
            "An arm pools the runs that differ only by train.seed: its figure is their mean AUROC, and "
            "each resample draws the patients once for all runs, then the seeds within each arm (with "
            "replacement), so the CI includes seed-to-seed variation."
        )
    if any(dropped):
        lines.append(
            f"Resamples without a positive or a negative of a label are left out of that label's "
            f"figures (at most {max(dropped)} of {b.get('resamples')}); a label with positives or negatives "
            f"from fewer than {bootstrap.MIN_PATIENTS} patients has no CI."
        )
    return "\n".join(lines + list(df.attrs.get("notes") or []))


CAPTIONS = {
    "paired": paired_caption,
    "heatmaps": heatmap_caption,
    "time": time_caption,  # printed with a caption
    "auroc": auroc_caption,
    "storage": storage_caption,
}


def auroc_display(df: pd.DataFrame) -> pd.DataFrame:
    """The AUROC table as text: each figure with its 95 % CI ("0.8123 (0.790-0.835)"), or for an arm
    of several seeds their mean and SD ("0.8123 ± 0.0040")."""
    ci, sd = df.attrs.get("ci") or {}, df.attrs.get("sd") or {}
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        cells = []
        for k, (row, v) in enumerate(df[col].items()):
            if v is None or pd.isna(v):
                cells.append("-")
            elif row == MEAN_LABELS:
                cells.append(f"{int(v)}/{len(LABELS)}")
            elif col in sd and not pd.isna(sd[col][k]):
                cells.append(f"{v:.4f} ± {sd[col][k]:.4f}")
            else:
                c = (ci.get(col) or {}).get(row)
                cells.append(f"{v:.4f}" + (f" ({c[0]:.3f}-{c[1]:.3f})" if c else ""))
        out[col] = cells
    return out


def _display(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text for the table and Markdown formats (AUROC 4 places, hours 3, bytes with commas)."""
    if name == "paired":
        return paired_display(df)
    if name == "auroc":
        return auroc_display(df)
    out = df.astype(object).copy()
    for col in df.columns:

        def f(v, idx, col=col):
            if v is None or pd.isna(v):
                return "-"
            if col == "mean AUROC - baseline":
                return f"{v:+.4f}"
            if "AUROC" in col:
                c = (df.attrs.get("ci") or {}).get((idx, col))
                return f"{v:.4f}" + (f" ({c[0]:.3f}-{c[1]:.3f})" if c else "")
            if col in ("total h", "compute h (with parent)", "h / epoch"):
                return f"{v:.3f}"
            if col == "train images/s":
                return f"{v:.1f}"
            if col in ("sparsity", "r (Pearson)", "top-10% IoU", "GMACs"):
                return f"{v:.3f}"
            if col == "peak in drawn finding":
                return f"{v:.0%}"
            if isinstance(v, (int, float)) and float(v).is_integer():
                return f"{int(v):,}"
            return str(v)

        out[col] = [f(v, idx) for idx, v in df[col].items()]
    if name == "heatmaps":
        out.index = [" / ".join(map(str, i)) for i in out.index]
    return out


def _json(name: str, df: pd.DataFrame):
    if name == "heatmaps":
        return {
            "baseline": df.attrs.get("baseline"),
            "seed": df.attrs.get("seed"),
            "notes": df.attrs.get("notes"),
            "rows": json.loads(df.reset_index().to_json(orient="records")),
        }
    if name == "paired":
        return {
            "baseline": df.attrs.get("baseline"),
            "bootstrap": df.attrs.get("bootstrap"),
            "notes": df.attrs.get("notes"),
            "unit": df.attrs.get("unit"),
            "runs": {
                run: json.loads(df.loc[run].to_json(orient="index"))
                for run in dict.fromkeys(df.index.get_level_values(0))
            },
        }
    return json.loads(df.to_json(orient="index"))


def _csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Run labels come from preset names and config values: no cell, label or header a spreadsheet runs."""

    def cell(v):
        return csv_cell(v) if isinstance(v, str) else v

    out = df.map(cell).rename(index=cell, columns=cell)
    out.attrs = df.attrs
    return out


def render(tbls: dict[str, pd.DataFrame], fmt: str) -> str:
    if fmt == "json":
        from chexui.format import json_text

        out = {k: _json(k, df) for k, df in tbls.items()}
        # the AUROC figures' CIs (runs) or SDs and seed counts (arms), and the best by validation
        out["auroc_detail"] = {
            k: v for k, v in tbls["auroc"].attrs.items() if k in ("ci", "sd", "seeds", "best_by_val")
        }
        return json_text(out)
    parts = []
    for name, df in tbls.items():
        if fmt == "csv":
            index = {"paired": ["run", "label"], "heatmaps": ["run", "model"], "auroc": "label"}.get(name, "run")
            parts.append(f"# {TITLES[name]}\n" + _csv_safe(df).to_csv(index_label=index))
        elif name in CAPTIONS and df.empty:
            parts.append(f"### {TITLES[name]}\n\n" + CAPTIONS[name](df).replace("\n", "\n\n") + "\n")
        else:  # markdown
            caption = "\n" + CAPTIONS[name](df).replace("\n", "\n\n") + "\n" if name in CAPTIONS else ""
            parts.append(
                f"### {TITLES[name]}\n\n"
                + _display(name, df).to_markdown(stralign="right", disable_numparse=True)
                + "\n"
                + caption
            )
    return "\n".join(parts)


def rich_tables(tbls: dict[str, pd.DataFrame]):
    from chexui.headless import table

    for name, df in tbls.items():
        if name in CAPTIONS and df.empty:
            yield CAPTIONS[name](df)
            continue
        shown = _display(name, df)
        t = table(INDEX.get(name, "run"), *shown.columns, title=TITLES[name])
        for idx, row in shown.iterrows():
            t.add_row(" / ".join(idx) if isinstance(idx, tuple) else str(idx), *row.tolist())
        if name in CAPTIONS:
            t.caption = CAPTIONS[name](df) or None
        yield t


def load(run_dirs: list[Path]) -> list[RunInfo]:
    from chexui.runs import load_run

    return [load_run(d) for d in run_dirs]
