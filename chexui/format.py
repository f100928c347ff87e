"""How chexui writes numbers, durations, config keys and names: one place for each, shared by the
headless output, the TUI, compare and sweeps. Pure Python (no rich, no pandas, no torch)."""

from __future__ import annotations

import json
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
    """A run's compression in a few words: "dense", "prune70", "prune-adaptive", "qat-all",
    "prune70+qat-conv"; `chexui compress` runs: "post-training prune70 ft1", "post-training ptq-all".
    Adaptive pruning that leaves the widths it does not list dense (prune.adaptive_default = "keep", the
    study's) is "prune-adaptive-listed": another method than the built-in one, another label."""
    p, q, c = cfg.get("prune") or {}, cfg.get("quantize") or {}, cfg.get("compress") or {}
    parts = []
    if p.get("enabled"):
        adaptive = "prune-adaptive-listed" if p.get("adaptive_default") == "keep" else "prune-adaptive"
        parts.append(adaptive if p.get("adaptive") else f"prune{round(100 * p.get('final_sparsity', 0))}")
        if c.get("parent") and (cfg.get("train") or {}).get("epochs"):
            parts[-1] += f" ft{cfg['train']['epochs']}"
    if q.get("enabled"):
        parts.append(f"qat-{q.get('scope')}")
    if c.get("ptq"):
        parts.append(f"ptq-{c.get('scope')}")
    text = "+".join(parts) or "dense"
    return f"post-training {text}" if c.get("parent") else text


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
