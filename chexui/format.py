"""How chexui writes numbers, durations, config keys and names: one place for each, shared by the
headless output, the TUI, compare and sweeps. Pure Python (no rich, no pandas, no torch)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.labels import n_defined

# config keys as column labels in comparison tables and sweep point labels
SHORT = {
    "train.lr": "LR",
    "train.batch_size": "B",
    "model.arch": "arch",
    "distributed.nproc": "P",
    "distributed.nnodes": "nodes",
    "prune.enabled": "prune",
    "prune.final_sparsity": "sparsity",
    "quantize.enabled": "QAT",
    "quantize.scope": "QAT scope",
    "train.epochs": "epochs",
    "data.image_size": "px",
    "train.min_lr": "min LR",
    "train.plateau_patience": "patience",
    "train.early_stop_patience": "early stop",
}


def fmt(v: float | None, spec: str = ".4f") -> str:
    """A number, or "-" when there is none."""
    return "-" if v is None else format(v, spec)


def human_bytes(n: float) -> str:
    """A file size in decimal units: 812 B, 44.7 MB."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def duration(s: float | None) -> str:
    """Seconds as a short human duration: 42s, 3.5m, 1.2h."""
    if s is None:
        return "-"
    return f"{s / 3600:.1f}h" if s >= 3600 else f"{s / 60:.1f}m" if s >= 60 else f"{s:.0f}s"


def hms(s: float | None) -> str:
    """Seconds as h:mm:ss (elapsed time and ETA)."""
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def compile_s(e: dict[str, Any]) -> float:
    """The seconds of an `epoch_ended` that torch.compile took: 0.0 when none or not a sane number."""
    c = e.get("compile_s")
    return float(c) if isinstance(c, (int, float)) and 0 < c <= e["epoch_time_s"] else 0.0


def epoch_time_text(e: dict[str, Any]) -> str:
    """An `epoch_ended`'s time, with the part torch.compile took when there was one: "48.2s (compile 31.0s)"."""
    c = compile_s(e)
    return f"{e['epoch_time_s']:.1f}s" + (f" (compile {c:.1f}s)" if c >= 0.05 else "")


def steady_epoch_s(e: dict[str, Any]) -> float:
    """An epoch's time without its compilation: what later epochs will take."""
    return e["epoch_time_s"] - compile_s(e)


def short_key(key: str) -> str:
    return SHORT.get(key, key.rsplit(".", 1)[-1])


def compression_text(cfg: dict) -> str:
    """A run's compression in a few words, each method's own (engine/config.py: LABELS) joined by "+":
    "dense", "prune70", "prune-adaptive", "qat-all", "prune70+qat-conv"; `chexui compress` runs:
    "post-training prune70 ft1", "post-training ptq-all"."""
    from engine import config

    text = "+".join(t for label in config.LABELS.values() if (t := label(cfg))) or "dense"
    return f"post-training {text}" if (cfg.get("compress") or {}).get("parent") else text


def value_text(v: Any) -> str:
    """A config value as it reads in a label: 0.001, true, [..]."""
    if isinstance(v, list):
        return json.dumps(v)
    return f"{v:g}" if isinstance(v, float) else str(v).lower() if isinstance(v, bool) else str(v)


def auc_marks(aucs: dict[str, float | None]) -> dict[str, str]:
    """{label: "best" | "worst"} for the highest and lowest defined AUROC; nothing when all are equal
    (as when every score ties at 0.5)."""
    defined = {k: v for k, v in aucs.items() if v is not None}
    if not defined:
        return {}
    best, worst = max(defined, key=lambda k: defined[k]), min(defined, key=lambda k: defined[k])
    return {} if defined[best] == defined[worst] else {best: "best", worst: "worst"}


def slug(name: str, fallback: str) -> str:
    """A name made safe for a directory or file name: letters, digits, - _ . (no leading dot)."""
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).lstrip(".") or fallback


def labelled(mean: float | None, n_labels: int | None) -> str:
    """A mean AUROC with how many of the 14 labels it covers: "0.7350 (14/14)"."""
    from engine.labels import LABELS

    return fmt(mean) if mean is None or n_labels is None else f"{fmt(mean)} ({n_labels}/{len(LABELS)})"


def mean_text(mean: float | None, aucs: dict[str, float | None] | None) -> str:
    return labelled(mean, n_defined(aucs) if aucs else None)


def json_text(obj: Any) -> str:
    """`--json` output: valid JSON whatever the values (NaN and infinities, which JSON lacks, become
    null), non-ASCII escaped (so no bidi control reaches a terminal raw)."""
    import math

    def finite(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            return None
        if isinstance(o, dict):
            return {str(k): finite(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [finite(v) for v in o]
        return o

    return json.dumps(finite(obj), indent=2, allow_nan=False, default=str)


def csv_cell(text: str) -> str:
    """A CSV cell a spreadsheet will not run: text starting with =, +, -, @ (or a tab or carriage return,
    which some read past) gets a leading apostrophe, as OWASP advises for CSV injection."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def with_ci(text: str, ci: list[float] | None) -> str:
    """A figure and its 95 % CI: "0.7350 (14/14) 0.701-0.768"; the figure alone without one."""
    return text if not ci or text == "-" else f"{text} {ci_text(ci)}"


def ci_text(ci: list[float] | None) -> str:
    """A 95 % confidence interval: "0.656-0.824", or "-" without one."""
    return "-" if not ci else f"{ci[0]:.3f}-{ci[1]:.3f}"


@dataclass(frozen=True)
class AurocRow:
    """One row of a per-label AUROC table (or its mean row), as text: every AUROC table chexui shows
    (headless, `runs show`, `eval`, the TUI's monitor) is made of these. `at` holds the threshold,
    sensitivity and specificity at the operating point chosen on validation, when the evaluation has one."""

    label: str
    auroc: str
    mark: str  # "best" | "worst" | ""
    ci: str
    at: tuple[str, str, str] | None


def auroc_rows(ev: dict[str, Any], digits: int = 3) -> tuple[list[AurocRow], AurocRow]:
    """An `evaluated` event (or a `chexui eval` result, or {"auc": ..., "auc_mean": ...} of an epoch) as
    one row per label and the mean row (its label: the labels it covers); `digits` for the
    operating-point figures."""
    from engine.labels import LABELS

    aucs, cis = ev.get("auc") or {}, ev.get("auc_ci") or {}
    at = ev.get("at_threshold")
    marks = auc_marks(aucs)
    spec = f".{digits}f"
    rows = []
    for name in LABELS:
        v = aucs.get(name)
        op = (at or {}).get(name) or {}
        rows.append(
            AurocRow(
                name,
                "null" if v is None and aucs else fmt(v),
                marks.get(name, ""),
                ci_text(cis.get(name)),
                (fmt(op.get("threshold"), spec), fmt(op.get("sensitivity"), spec), fmt(op.get("specificity"), spec))
                if at
                else None,
            )
        )
    mean = AurocRow(  # label: how many labels the mean covers ("12/14"; "" before any AUROC)
        f"{n_defined(aucs)}/{len(LABELS)}" if aucs else "",
        fmt(ev.get("auc_mean")),
        "",
        ci_text(ev.get("auc_mean_ci")),
        ("", "", "") if at else None,
    )
    return rows, mean
