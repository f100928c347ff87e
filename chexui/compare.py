"""Study-style tables across runs (pandas), read from each run's config and event stream.

- AUROC: the 14 labels + mean, one column per run, labelled by the config keys that differ between the
  runs (`LR=0.001 B=64`), and the CheXNet paper's published AUROC as a reference column.
- training time: parent run (post-training compression), processes, epochs, total hours, compute hours
  with the parent's training, hours per epoch, training images/s.
- storage: parameters, nonzero parameters, and the bytes and gzip bytes of each exported artifact.
- paired: each run against a baseline run evaluated on the same test split (same split sha256):
  the difference in test AUROC per class and of the mean, with its paired patient-bootstrap 95 % CI
  and p-value, from the runs' saved predictions (predictions/test.npz). Runs on other splits are left
  out of it, with a note saying why.
- heatmaps (opt-in, `--heatmaps N`: it runs the models): on N seeded test images of the baseline,
  each run's shipped model's Grad-CAM agreement with the baseline's (Pearson r, top-10 % IoU) for the
  baseline's top-3 labels, beside the mean AUROC difference, and on a demo set how often the map's
  peak falls in the drawn finding (engine.explain.sample_agreement).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from chexui.format import compression_text, csv_cell, n_defined, short_key, value_text
from chexui.runs import RunInfo
from engine import bootstrap, config, metrics, predictions
from engine.errors import UserError
from engine.events import ARTIFACT_SPLITS, last_evaluation
from engine.labels import CHEXNET_AUROC, LABELS

REFERENCE = "CheXNet (paper)"
# keys that say nothing about the experiment
IGNORED = {"name", "description", "sweep", "data.workers", "export.enabled", "compress.parent"}


COMPRESSION = ("prune.", "quantize.", "compress.")  # summed up by `compression_text`
IMPLIED_BY_PARENT = {"train.epochs", "train.lr", "model.pretrained"}  # a compress run sets these from --options


def run_labels(runs: list[RunInfo]) -> list[str]:
    """Column labels from what differs between the runs: the compression method in a few words, then
    the other config keys whose values differ (else the run ids)."""
    cfgs = [(r.first("run_started") or {}).get("config", {}) for r in runs]
    flats = [config.flatten(c) for c in cfgs]
    keys = sorted({k for f in flats for k in f} - IGNORED)
    after = [bool(f.get("compress.parent")) for f in flats]

    def values(k: str) -> set[str]:  # (a compress run's epochs/LR say nothing its method does not)
        return {json.dumps(f.get(k), default=str) for f, a in zip(flats, after)
                if not (a and k in IMPLIED_BY_PARENT)}
    differ = [k for k in keys if not k.startswith(COMPRESSION) and len(values(k)) > 1]
    methods = [compression_text(c) for c in cfgs]
    if len(runs) < 2 or not (differ or len(set(methods)) > 1):
        return _unique([r.id for r in runs])
    labels = []
    for f, method, compressed_after in zip(flats, methods, after):
        parts = [method] if len(set(methods)) > 1 else []
        parts += [f"{short_key(k)}={value_text(f.get(k))}" for k in differ
                  if not (compressed_after and k in IMPLIED_BY_PARENT)]
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
    return last_evaluation(r.events, split)


MEAN_LABELS = "labels in mean"


def auroc_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    cols = {}
    for r, lab in zip(runs, labels):
        t = _test(r)
        cols[lab] = ([t["auc"].get(name) if t else None for name in LABELS]
                     + [t["auc_mean"] if t else None, n_defined(t["auc"]) if t else None])
    cols[REFERENCE] = ([CHEXNET_AUROC[name] for name in LABELS]
                       + [sum(CHEXNET_AUROC.values()) / len(LABELS), len(LABELS)])
    return pd.DataFrame(cols, index=[*LABELS, "mean", MEAN_LABELS], dtype="float64")


def _split_sha(r: RunInfo) -> str | None:
    return ((r.first("run_started") or {}).get("dataset") or {}).get("split_sha256")


def _predictions(r: RunInfo) -> dict:
    return predictions.load(predictions.path_for(r.run_dir, "test"))


def _unpaired(base: RunInfo, r: RunInfo) -> str | None:
    """Why `r` cannot be paired with the baseline, or None."""
    if _test(base) is None or _test(r) is None:
        return "no test evaluation (the run did not complete)"
    if _split_sha(base) != _split_sha(r) or _split_sha(r) is None:
        return "evaluated on a different test split (split sha256 differs), so its images are not the baseline's"
    return None


def paired_table(runs: list[RunInfo], labels: list[str], base: int) -> pd.DataFrame:
    """Rows (run, label): B minus the baseline A, its paired 95 % CI and p-value. The bootstrap
    resamples the same patients for both runs (the baseline's recorded resamples and seed).
    `.attrs`: the baseline's label and the notes on runs left out."""
    a, rows, notes = runs[base], [], []
    spec = bootstrap.Spec(**{k: v for k, v in ((_test(a) or {}).get("bootstrap") or {}).items()
                             if k in ("resamples", "seed")})
    pa = None
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
        if why is None and not np.array_equal(pa["image_ids"], pb["image_ids"]):
            why = "its saved predictions are for other images than the baseline's"
        if why is not None:
            notes.append(f"{lab}: not compared with the baseline: {why}")
            continue
        y = pa["labels"]
        aucs_a = metrics.per_class_auroc(y, pa["probs"])[0]
        aucs_b = metrics.per_class_auroc(y, pb["probs"])[0]
        res = bootstrap.paired(y, pa["probs"], pb["probs"], pa["patient_ids"], aucs_a, aucs_b, spec)
        for name, d in [*res["labels"].items(), ("mean", res["mean"])]:
            lo, hi = d["ci"] or (None, None)
            rows.append({"run": lab, "label": name, "delta": d["delta"], "ci_lo": lo, "ci_hi": hi, "p": d["p"],
                         "distinguishable": None if lo is None else bool(lo > 0 or hi < 0)})
    df = pd.DataFrame(rows, columns=["run", "label", "delta", "ci_lo", "ci_hi", "p", "distinguishable"])
    df = df.set_index(["run", "label"])
    df.attrs.update(baseline=labels[base], notes=notes, bootstrap=spec.record())
    return df


def time_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    rows = []
    for r, lab in zip(runs, labels):
        epochs = [e for e in r.events if e["type"] == "epoch_ended"]
        started = r.last("restarted") or r.first("run_started") or {}
        done = r.last("run_finished") or {}
        total = done.get("total_time_s")
        # a post-training compression run: its parent's training time counts toward its compute
        parent = (r.first("run_started") or {}).get("parent") or {}
        compute = total + (parent.get("total_time_s") or 0) if total is not None else None
        rows.append({
            "run": lab, "status": r.status, "parent": parent.get("run_id"), "processes": started.get("world_size"),
            "epochs": len(epochs), "best epoch": done.get("best_epoch"),
            "total h": total / 3600 if total is not None else None,
            "compute h (with parent)": compute / 3600 if compute is not None else None,
            "h / epoch": sum(e["epoch_time_s"] for e in epochs) / len(epochs) / 3600 if epochs else None,
            "train images/s": sum(e["images_per_s"] for e in epochs) / len(epochs) if epochs else None,
        })
    return pd.DataFrame(rows).set_index("run")


def storage_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    rows = []
    for r, lab in zip(runs, labels):
        ex = r.last("exported") or {}
        row: dict[str, Any] = {"run": lab,
                               "parameters": ex.get("parameters") or (r.first("run_started") or {}).get("parameters"),
                               "nonzero": ex.get("nonzero_parameters"),
                               # zeros over the pruned layers' weights (the pruning target's measure)
                               "sparsity": ex.get("sparsity")}
        arts = {a["kind"]: a for a in ex.get("artifacts", [])}
        for kind in ARTIFACT_SPLITS:
            a = arts.get(kind)
            row[f"{kind} bytes"] = a["bytes"] if a else None
            row[f"{kind} gzip"] = a["gzip_bytes"] if a else None
            ev = next(filter(None, (_test(r, s) for s in ARTIFACT_SPLITS[kind])), None) if a else None
            row[f"{kind} AUROC"] = ev["auc_mean"] if ev else None
        rows.append(row)
    df = pd.DataFrame(rows).set_index("run").astype("Float64")
    # ONNX columns only where some run has ONNX files (runs exported before ONNX, or without the extra)
    onnx = [c for c in df.columns if c.startswith("onnx_") and df[c.split(" ")[0] + " bytes"].isna().all()]
    return df.drop(columns=onnx)


def heatmap_table(runs: list[RunInfo], labels: list[str], base: int, n_images: int, seed: int = 0) -> pd.DataFrame:
    """Rows (run, model): Grad-CAM agreement with the baseline on a seeded sample of its test images."""
    from engine.explain import sample_agreement
    others = [i for i in range(len(runs)) if i != base]
    by_id = {runs[i].run_dir.name: labels[i] for i in [base, *others]}
    recs = sample_agreement(runs[base].run_dir, [runs[i].run_dir for i in others], n_images, seed)
    aucs = {lab: (_test(r) or {}).get("auc_mean") for r, lab in zip(runs, labels)}
    rows, notes = [], []
    for rec in recs:
        lab = by_id[rec["run"]]
        if rec.get("skipped"):
            notes.append(f"none computed: {rec['skipped']}" if lab == labels[base] else f"{lab}: not compared: {rec['skipped']}")
            continue
        delta = None if rec["model"] == "baseline" or None in (aucs[lab], aucs[labels[base]]) else aucs[lab] - aucs[labels[base]]
        rows.append({"run": lab, "model": rec["model"], "images": rec["images"], "maps": rec["maps"],
                     "mean AUROC - baseline": delta, "r (Pearson)": rec["pearson"], "top-10% IoU": rec["top_iou"],
                     "peak in drawn finding": rec["peak_hits"] / rec["peak_maps"] if rec["peak_maps"] else None,
                     "peak maps": rec["peak_maps"]})
    df = pd.DataFrame(rows, columns=["run", "model", "images", "maps", "mean AUROC - baseline", "r (Pearson)",
                                     "top-10% IoU", "peak in drawn finding", "peak maps"]).set_index(["run", "model"])
    df.attrs.update(baseline=labels[base], notes=notes, seed=seed)
    return df


def heatmap_caption(df: pd.DataFrame) -> str:
    lines = [f"Grad-CAM of each run's shipped model (a QAT run: its int8 artifact's fake-quantized twin) against "
             f"the baseline ({df.attrs.get('baseline')}) on the same seeded sample of its test images (seed "
             f"{df.attrs.get('seed')}), for the baseline's 3 most probable labels per image: mean Pearson r of "
             "the maps and mean IoU of their top 10 %. 'peak in drawn finding': on a chexui demo set, the share "
             "of maps for findings the image shows whose peak lies inside the region the generator drew "
             "('peak maps' of them)."]
    return "\n".join(lines + list(df.attrs.get("notes") or []))


def tables(runs: list[RunInfo], baseline: int = 0, heatmaps: int = 0) -> dict[str, pd.DataFrame]:
    """The study tables; with `heatmaps` > 0, also Grad-CAM agreement on that many test images."""
    labels = run_labels(runs)
    out = {"auroc": auroc_table(runs, labels), "time": time_table(runs, labels),
           "storage": storage_table(runs, labels)}
    if len(runs) > 1:
        out["paired"] = paired_table(runs, labels, baseline)
        if heatmaps > 0:
            out["heatmaps"] = heatmap_table(runs, labels, baseline, heatmaps)
    return out


TITLES = {"auroc": "Test AUROC per class", "time": "Training time", "storage": "Storage",
          "paired": "Paired difference in test AUROC against the baseline",
          "heatmaps": "Grad-CAM agreement with the baseline"}
INDEX = {"auroc": "label", "paired": "label", "heatmaps": "run / model"}


def _p_text(p: float, resamples: int) -> str:
    return f"p<{1 / resamples:.3g}" if p == 0 else f"p={p:.3f}"


def paired_display(df: pd.DataFrame) -> pd.DataFrame:
    """One text column per run: "+0.0123 (-0.0100 to +0.0310) p=0.210", marked * when the 95 % CI
    excludes 0 (a difference distinguishable from noise)."""
    cols, resamples = {}, (df.attrs.get("bootstrap") or {}).get("resamples") or 1
    for run in dict.fromkeys(df.index.get_level_values(0)):
        sub = df.loc[run]
        cols[run] = ["-" if pd.isna(row.delta) or pd.isna(row.ci_lo) else
                     f"{row.delta:+.4f} ({row.ci_lo:+.4f} to {row.ci_hi:+.4f}) {_p_text(row.p, resamples)}"
                     + (" *" if row.distinguishable else "") for row in sub.itertuples()]
    return pd.DataFrame(cols, index=[*LABELS, "mean"])


def paired_caption(df: pd.DataFrame) -> str:
    b = df.attrs.get("bootstrap") or {}
    lines = [f"Each run minus the baseline ({df.attrs.get('baseline')}) on the same test images: difference, "
             f"95% CI from {b.get('resamples')} paired {b.get('unit')} bootstrap resamples (seed {b.get('seed')}), "
             "two-sided p-value; * = the CI excludes 0 (distinguishable from noise)."]
    return "\n".join(lines + list(df.attrs.get("notes") or []))


CAPTIONS = {"paired": paired_caption, "heatmaps": heatmap_caption}  # tables printed with a caption


def _display(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text for the table and Markdown formats (AUROC 4 places, hours 3, bytes with commas)."""
    if name == "paired":
        return paired_display(df)
    out = df.astype(object).copy()
    for col in df.columns:
        def f(v, col=col):
            if v is None or pd.isna(v):
                return "-"
            if col == "mean AUROC - baseline":
                return f"{v:+.4f}"
            if name == "auroc" or "AUROC" in col:
                return f"{v:.4f}"
            if col in ("total h", "compute h (with parent)", "h / epoch"):
                return f"{v:.3f}"
            if col == "train images/s":
                return f"{v:.1f}"
            if col in ("sparsity", "r (Pearson)", "top-10% IoU"):
                return f"{v:.3f}"
            if col == "peak in drawn finding":
                return f"{v:.0%}"
            if isinstance(v, (int, float)) and float(v).is_integer():
                return f"{int(v):,}"
            return str(v)
        out[col] = [f(v) for v in df[col]]
    if name == "heatmaps":
        out.index = [" / ".join(map(str, i)) for i in out.index]
    if name == "auroc":
        out.loc[MEAN_LABELS] = ["-" if pd.isna(v) else f"{int(v)}/{len(LABELS)}" for v in df.loc[MEAN_LABELS]]
    return out


def _json(name: str, df: pd.DataFrame):
    if name == "heatmaps":
        return {"baseline": df.attrs.get("baseline"), "seed": df.attrs.get("seed"), "notes": df.attrs.get("notes"),
                "rows": json.loads(df.reset_index().to_json(orient="records"))}
    if name == "paired":
        return {"baseline": df.attrs.get("baseline"), "bootstrap": df.attrs.get("bootstrap"),
                "notes": df.attrs.get("notes"),
                "runs": {run: json.loads(df.loc[run].to_json(orient="index"))
                         for run in dict.fromkeys(df.index.get_level_values(0))}}
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
        return json_text({k: _json(k, df) for k, df in tbls.items()})
    parts = []
    for name, df in tbls.items():
        if fmt == "csv":
            index = {"paired": ["run", "label"], "heatmaps": ["run", "model"], "auroc": "label"}.get(name, "run")
            parts.append(f"# {TITLES[name]}\n" + _csv_safe(df).to_csv(index_label=index))
        elif name in CAPTIONS and df.empty:
            parts.append(f"### {TITLES[name]}\n\n" + CAPTIONS[name](df).replace("\n", "\n\n") + "\n")
        else:  # markdown
            caption = "\n" + CAPTIONS[name](df).replace("\n", "\n\n") + "\n" if name in CAPTIONS else ""
            parts.append(f"### {TITLES[name]}\n\n" + _display(name, df).to_markdown(stralign="right", disable_numparse=True)
                         + "\n" + caption)
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
            t.caption = CAPTIONS[name](df)
        yield t


def load(run_dirs: list[Path]) -> list[RunInfo]:
    from chexui.runs import load_run
    return [load_run(d) for d in run_dirs]
