"""Study-style tables across runs (pandas), read from each run's config and event stream.

- AUROC: the 14 labels + mean, one column per run, labelled by the config keys that differ between the
  runs (`LR=0.001 B=64`), and the CheXNet paper's published AUROC as a reference column.
- training time: processes, epochs, total hours, hours per epoch, training images/s.
- storage: parameters, nonzero parameters, and the bytes and gzip bytes of each exported artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from chexui.format import short_key, value_text
from chexui.runs import RunInfo
from engine import config
from engine.events import ARTIFACT_SPLITS, last_evaluation
from engine.labels import CHEXNET_AUROC, LABELS

REFERENCE = "CheXNet (paper)"
# keys that say nothing about the experiment
IGNORED = {"name", "description", "sweep", "data.workers", "export.enabled"}


def run_labels(runs: list[RunInfo]) -> list[str]:
    """Column labels from the config keys whose values differ between the runs (else the run ids)."""
    flats = [config.flatten((r.first("run_started") or {}).get("config", {})) for r in runs]
    keys = sorted({k for f in flats for k in f} - IGNORED)
    differ = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1]
    if len(runs) < 2 or not differ:
        return [r.id for r in runs]
    # keys off by default (pruning/QAT disabled) hide their sub-keys: "prune=false" says it all
    labels = []
    for f in flats:
        parts = []
        for k in differ:
            section = k.split(".")[0]
            if section in ("prune", "quantize") and not k.endswith(".enabled") and not f.get(f"{section}.enabled"):
                continue
            parts.append(f"{short_key(k)}={value_text(f.get(k))}")
        labels.append(" ".join(parts))
    if len(set(labels)) < len(labels):  # same differing keys (e.g. repeated runs): add the id
        labels = [f"{lab} ({r.id})" for lab, r in zip(labels, runs)]
    return labels


def _test(r: RunInfo, split: str = "test") -> dict | None:
    return last_evaluation(r.events, split)


def auroc_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    cols = {}
    for r, lab in zip(runs, labels):
        t = _test(r)
        cols[lab] = [t["auc"].get(name) if t else None for name in LABELS] + [t["auc_mean"] if t else None]
    cols[REFERENCE] = [CHEXNET_AUROC[name] for name in LABELS] + [sum(CHEXNET_AUROC.values()) / len(LABELS)]
    return pd.DataFrame(cols, index=[*LABELS, "mean"], dtype="float64")


def time_table(runs: list[RunInfo], labels: list[str]) -> pd.DataFrame:
    rows = []
    for r, lab in zip(runs, labels):
        epochs = [e for e in r.events if e["type"] == "epoch_ended"]
        started = r.last("restarted") or r.first("run_started") or {}
        done = r.last("run_finished") or {}
        total = done.get("total_time_s")
        rows.append({
            "run": lab, "status": r.status, "processes": started.get("world_size"),
            "epochs": len(epochs), "best epoch": done.get("best_epoch"),
            "total h": total / 3600 if total is not None else None,
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
                               "nonzero": ex.get("nonzero_parameters")}
        arts = {a["kind"]: a for a in ex.get("artifacts", [])}
        for kind in ("fp32", "sparse", "int8"):
            a = arts.get(kind)
            row[f"{kind} bytes"] = a["bytes"] if a else None
            row[f"{kind} gzip"] = a["gzip_bytes"] if a else None
            ev = next(filter(None, (_test(r, s) for s in ARTIFACT_SPLITS[kind])), None) if a else None
            row[f"{kind} AUROC"] = ev["auc_mean"] if ev else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("run").astype("Float64")


def tables(runs: list[RunInfo]) -> dict[str, pd.DataFrame]:
    labels = run_labels(runs)
    return {"auroc": auroc_table(runs, labels), "time": time_table(runs, labels),
            "storage": storage_table(runs, labels)}


TITLES = {"auroc": "Test AUROC per class", "time": "Training time", "storage": "Storage"}


def _display(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """Numbers as text for the table and Markdown formats (AUROC 4 places, hours 3, bytes with commas)."""
    out = df.astype(object).copy()
    for col in df.columns:
        def f(v, col=col):
            if v is None or pd.isna(v):
                return "-"
            if name == "auroc" or "AUROC" in col:
                return f"{v:.4f}"
            if col in ("total h", "h / epoch"):
                return f"{v:.3f}"
            if col == "train images/s":
                return f"{v:.1f}"
            if isinstance(v, (int, float)) and float(v).is_integer():
                return f"{int(v):,}"
            return str(v)
        out[col] = [f(v) for v in df[col]]
    return out


def render(tbls: dict[str, pd.DataFrame], fmt: str) -> str:
    if fmt == "json":
        return json.dumps({k: json.loads(df.to_json(orient="index")) for k, df in tbls.items()}, indent=2)
    parts = []
    for name, df in tbls.items():
        if fmt == "csv":
            parts.append(f"# {TITLES[name]}\n" + df.to_csv(index_label="label" if name == "auroc" else "run"))
        else:  # markdown
            parts.append(f"### {TITLES[name]}\n\n" + _display(name, df).to_markdown(stralign="right", disable_numparse=True) + "\n")
    return "\n".join(parts)


def rich_tables(tbls: dict[str, pd.DataFrame]):
    from chexui.headless import table
    for name, df in tbls.items():
        shown = _display(name, df)
        t = table("label" if name == "auroc" else "run", *shown.columns, title=TITLES[name])
        for idx, row in shown.iterrows():
            t.add_row(str(idx), *row.tolist())
        yield t


def load(run_dirs: list[Path]) -> list[RunInfo]:
    from chexui.runs import load_run
    return [load_run(d) for d in run_dirs]
