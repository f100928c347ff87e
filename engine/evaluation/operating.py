"""From scores to decisions: per-label operating points chosen on validation, the metrics at them
(with patient-bootstrap intervals), calibration error and temperature scaling.

A call is positive when probability >= threshold. Thresholds and temperatures are fitted on the
validation split only; the test split is only ever scored with them. Rules (`[eval] operating_point`):
- "youden": the ROC point maximising sensitivity + specificity - 1;
- "f1": the threshold with the best F1 (precision/recall curve);
- "sensitivity=0.90": the highest threshold whose sensitivity is at least 0.90 (the most specific
  such point; screening use);
- "specificity=0.90": the lowest threshold whose specificity is at least 0.90.
sklearn's `roc_curve` / `precision_recall_curve` give the candidate thresholds (every distinct score).

Temperature scaling (Guo et al. 2017), one temperature per label because the 14 outputs are separate
sigmoids: T minimises the validation BCE of sigmoid(logit / T). It is monotone per label, so the calls at
a threshold do not change; only the probabilities shown do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine import config, rundir
from engine.labels import LABELS

METRICS = ("sensitivity", "specificity", "ppv", "npv", "f1")
ECE_BINS = 15


parse_rule = config.parse_operating_point  # (the grammar of the config value lives with the config)


def threshold(y: np.ndarray, p: np.ndarray, rule: str) -> float | None:
    """One label's threshold under `rule`; None when the split has no positives or no negatives."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    name, target = parse_rule(rule)
    target = 0.0 if target is None else target  # (youden and f1 take none)
    y = np.asarray(y).astype(bool)
    if y.all() or not y.any():
        return None
    if name == "f1":
        precision, recall, thr = precision_recall_curve(y, p)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
        return float(thr[int(np.argmax(f1))])
    fpr, tpr, thr = roc_curve(y, p, drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # the first point is "nothing positive" (threshold inf)
    if name == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    if name == "sensitivity":  # thresholds fall along the curve: the first reaching the target is the highest
        return float(thr[int(np.argmax(tpr >= target - 1e-12))])
    ok = np.nonzero(1 - fpr >= target - 1e-12)[0]  # specificity: the last (lowest threshold) that keeps it
    return float(thr[ok[-1]]) if len(ok) else float(thr[0])


def choose(labels: np.ndarray, probs: np.ndarray, rule: str) -> dict[str, float | None]:
    """Per-label thresholds from a split's labels [N, 14] and probabilities [N, 14]."""
    return {name: threshold(labels[:, j], probs[:, j], rule) for j, name in enumerate(LABELS)}


def _rates(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """The five metrics from confusion counts (arrays broadcast); NaN where a denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "ppv": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def _none(v: Any) -> float | None:
    return None if not np.isfinite(v) else float(v)


def at_thresholds(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: dict[str, float | None],
    patients: np.ndarray | None = None,
    spec=None,
) -> dict[str, dict | None]:
    """Per label at its threshold: the five metrics and the confusion counts, and with `patients` and a
    bootstrap `spec`, each metric's 95 % interval from the same patient resamples as the AUROC's
    (`{metric}_ci: [lo, hi]`). None for a label without a threshold."""
    from engine.evaluation import bootstrap

    counts = codes = None
    if spec is not None and patients is not None and len(patients):
        codes, counts = bootstrap.patient_counts(patients, spec.resamples, spec.seed)
    out: dict[str, dict | None] = {}
    for j, name in enumerate(LABELS):
        t = thresholds.get(name)
        if t is None:
            out[name] = None
            continue
        y, call = labels[:, j].astype(bool), probs[:, j] >= t
        cells = {"tp": call & y, "fp": call & ~y, "tn": ~call & ~y, "fn": ~call & y}
        point = _rates(*(np.float64(c.sum()) for c in cells.values()))
        rec: dict[str, Any] = {
            "threshold": t,
            **{m: _none(v) for m, v in point.items()},
            **{k: int(c.sum()) for k, c in cells.items()},
        }
        if counts is not None:
            # each resample weighs image i by how often its patient was drawn: confusion counts are
            # weighted sums, a matrix product per cell (blocks of resamples keep memory small)
            reps: dict[str, list[np.ndarray]] = {m: [] for m in METRICS}
            for b0 in range(0, len(counts), 100):
                w = counts[b0 : b0 + 100][:, codes].astype(np.float64)
                r = _rates(*(w @ c.astype(np.float64) for c in cells.values()))
                for m in METRICS:
                    reps[m].append(r[m])
            for m in METRICS:
                v = np.concatenate(reps[m])
                v = v[np.isfinite(v)]
                rec[f"{m}_ci"] = (
                    [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                    if len(v) >= 0.9 * len(counts)
                    else None
                )  # undefined in >10 % of resamples
        out[name] = rec
    return out


def ece(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of one label: equal-width probability bins, |observed rate - mean
    probability| weighted by the bin's share of images."""
    idx = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / max(len(p), 1))


def reliability(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean probability, observed positive rate, images) per non-empty bin: the reliability diagram."""
    idx = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
    n = np.bincount(idx, minlength=bins)
    keep = n > 0
    mean_p = np.bincount(idx, weights=p, minlength=bins)[keep] / n[keep]
    rate = np.bincount(idx, weights=y, minlength=bins)[keep] / n[keep]
    return mean_p, rate, n[keep]


def eces(labels: np.ndarray, probs: np.ndarray) -> dict[str, float | None]:
    return {
        name: (ece(labels[:, j], probs[:, j]) if 0 < labels[:, j].sum() < len(labels) else None)
        for j, name in enumerate(LABELS)
    }


def fit_temperature(y: np.ndarray, logits: np.ndarray) -> float:
    """The temperature T in [0.05, 20] minimising the BCE of sigmoid(logits / T) on these (validation) images."""
    from scipy.optimize import minimize_scalar

    y, z = np.asarray(y, np.float64), np.asarray(logits, np.float64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, s) - y * s))  # BCE with logits, stable

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(res.x))


def temperatures(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """Per-label temperatures; 1.0 for a label without both classes."""
    return {
        name: (fit_temperature(labels[:, j], logits[:, j]) if 0 < labels[:, j].sum() < len(labels) else 1.0)
        for j, name in enumerate(LABELS)
    }


def logits_of(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def calibrated(probs: np.ndarray, temps: dict[str, float]) -> np.ndarray:
    """Probabilities [N, 14] after per-label temperature scaling."""
    t = np.array([temps.get(name, 1.0) for name in LABELS])
    return 1 / (1 + np.exp(-logits_of(probs) / t))


def recorded(run_dir) -> dict | None:
    """The run's operating points as its `operating_points` event recorded them (the last one), or None
    for a run that has none (not finished, or trained before chexui chose them)."""

    evs = [e for e in rundir.events(run_dir) if e["type"] == "operating_points"]
    return evs[-1] if evs else None


def calls(probs: np.ndarray, thresholds: dict[str, float | None]) -> list[list[bool | None]]:
    """Positive (True) / negative (False) per image and label at the thresholds; None without one."""
    return [
        [None if thresholds.get(name) is None else bool(p[j] >= thresholds[name]) for j, name in enumerate(LABELS)]
        for p in np.asarray(probs)
    ]
