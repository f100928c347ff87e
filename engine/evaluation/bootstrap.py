"""AUROC uncertainty by a patient bootstrap: confidence intervals and paired comparisons.

Images of one patient are correlated (same body, often the same finding on follow-up films), so the
resampling unit is the patient: each resample draws as many patients as the split has, with
replacement, and every image of a drawn patient comes along (as often as the patient was drawn).

Pure numpy (no torch): the engine calls it at each test evaluation, `chexui compare` for paired
differences between two runs' saved predictions.

Hand-written rather than sklearn's `roc_auc_score` in a loop: 1,000 resamples x 14 labels of an
NIH-size test split (25,000 images) are 14,000 calls of about 3 ms each (about 40 s); one resample
is a weighting of the same images (weight = how often the image's patient was drawn), so each label
is sorted once and every resample's weighted AUROC is a cumulative sum over that order, vectorised
over a block of resamples (a few seconds in all; `benchmarks/bootstrap_bench.py`). The point
estimates stay sklearn's (engine/evaluation/metrics.py); tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.labels import LABELS

UNIT = "patient"
LEVEL = 0.95  # two-sided confidence level of every interval
BLOCK = 16  # resamples per vectorised block: 16 x 25,000 float32 fits in cache (fastest measured)


@dataclass(frozen=True)
class Spec:
    resamples: int = 1000
    seed: int = 0

    @classmethod
    def from_config(cls, eval_cfg: dict) -> Spec | None:
        """From a run config's [eval] section; None when it asks for no intervals (0 resamples)."""
        n = eval_cfg["bootstrap_resamples"]
        return cls(n, eval_cfg["bootstrap_seed"]) if n else None

    def record(self) -> dict:
        """What an `evaluated` event says about how its intervals were made."""
        return {"resamples": self.resamples, "seed": self.seed, "unit": UNIT, "method": "percentile", "level": LEVEL}


def patient_counts(patients: np.ndarray, resamples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, counts): codes[i] = image i's patient as 0..P-1; counts[b, p] = how often resample b
    drew patient p (each resample draws P patients with replacement). Same seed, same patients ->
    same resamples, which is what makes two runs' replicates paired."""
    _, codes = np.unique(patients, return_inverse=True)
    n_pat = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_pat, size=(resamples, n_pat), dtype=np.int32)
    flat = (draws + np.arange(resamples)[:, None] * n_pat).ravel()
    counts = np.bincount(flat, minlength=resamples * n_pat).reshape(resamples, n_pat)
    return codes, counts.astype(np.float32)


class _Label:
    """One label's scores arranged once for every resample: negatives in score order, and for each
    positive how many negatives score below it (`lo`) and at most as high (`hi`); ties count half."""

    def __init__(self, scores: np.ndarray, y: np.ndarray, codes: np.ndarray):
        pos = y.astype(bool)
        neg_order = np.argsort(scores[~pos], kind="stable")
        neg_sorted = scores[~pos][neg_order]
        self.neg_codes = codes[~pos][neg_order]  # patient of each negative, in score order
        self.pos_codes = codes[pos]
        self.lo = np.searchsorted(neg_sorted, scores[pos], side="left")
        self.hi = np.searchsorted(neg_sorted, scores[pos], side="right")

    def auroc(self, counts: np.ndarray) -> np.ndarray:
        """The weighted Mann-Whitney statistic under each row of `counts` (R x patients), where an image
        weighs its patient's count: NaN where a resample has no positive or no negative."""
        wn = counts[:, self.neg_codes]
        below = np.zeros((len(counts), wn.shape[1] + 1), np.float32)
        # integer weights: float32 sums stay exact up to 2**24 (an NIH split is about 25,000 images)
        np.cumsum(wn, axis=1, out=below[:, 1:])
        wp = counts[:, self.pos_codes]
        num = (wp * (below[:, self.lo] + below[:, self.hi])).sum(1, dtype=np.float64) / 2
        tot_p, tot_n = wp.sum(1, dtype=np.float64), below[:, -1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where((tot_p > 0) & (tot_n > 0), num / (tot_p * tot_n), np.nan)


def replicates(labels: np.ndarray, scores: list[np.ndarray], patients: np.ndarray, spec: Spec) -> list[np.ndarray]:
    """For each score matrix (images x labels), its AUROC in every resample: R x labels, NaN where a
    resample has no positive or no negative of a label. Several score matrices of the same images
    share the resamples (paired)."""
    codes, counts = patient_counts(patients, spec.resamples, spec.seed)
    preps = [
        [_Label(np.asarray(s[:, j], np.float64), labels[:, j], codes) for j in range(labels.shape[1])] for s in scores
    ]
    out = [np.empty((spec.resamples, labels.shape[1])) for _ in scores]
    for b0 in range(0, spec.resamples, BLOCK):
        block = counts[b0 : b0 + BLOCK]
        for prep, res in zip(preps, out):
            for j, lab in enumerate(prep):
                res[b0 : b0 + BLOCK, j] = lab.auroc(block)
    return out


MIN_PATIENTS = 3  # a label needs positives and negatives from this many patients for an interval
MIN_USABLE = 0.2  # the share of resamples an interval needs (the others lack a class of some label)


def _mean_over(reps: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Per-resample mean over the labels defined in the point estimate: the same label set in every
    resample, so a resample that lost every positive (or negative) of one of them has no mean (NaN,
    dropped and counted) rather than the mean of fewer labels."""
    out = np.full(len(reps), np.nan)
    if defined.any():
        sub = reps[:, defined]
        ok = np.isfinite(sub).all(axis=1)
        out[ok] = sub[ok].mean(axis=1)
    return out


def _order_statistics(values: np.ndarray) -> tuple[np.ndarray, int]:
    """The finite replicates sorted, and k: the 95 % interval is [v[k], v[n-1-k]] (order statistics, no
    interpolation), so that it excludes 0 exactly when the p-value of `_p_value` is <= 0.05."""
    v = np.sort(values[np.isfinite(values)])
    return v, int(np.floor((1 - LEVEL) / 2 * len(v)))


def _interval(values: np.ndarray) -> list[float] | None:
    v, k = _order_statistics(values)
    if len(v) < max(2, MIN_USABLE * len(values)):
        return None
    return [float(v[k]), float(v[len(v) - 1 - k])]


def _p_value(delta: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of "no difference", from the same sorted replicates as the interval:
    2 x the smaller count of replicates on either side of 0 over the usable ones, so p <= 0.05 exactly
    when the 95 % interval excludes 0; floored at 1/(n+1) (n resamples cannot show less: printed
    "< 0.001" at 1,000) and capped at 1."""
    v, _ = _order_statistics(delta)
    if len(v) < max(2, MIN_USABLE * len(delta)):
        return None
    m = min(int((v <= 0).sum()), int((v >= 0).sum()))
    return float(min(1.0, max(2 * m / len(v), 1 / (len(v) + 1))))


def _defined(aucs: dict[str, float | None]) -> np.ndarray:
    return np.array([aucs.get(name) is not None for name in LABELS])


def _too_few(labels: np.ndarray, patients: np.ndarray, j: int) -> str | None:
    """Why label j gets no interval: positives or negatives from fewer than MIN_PATIENTS patients."""
    y = labels[:, j].astype(bool)
    pos, neg = len(np.unique(patients[y])), len(np.unique(patients[~y]))
    if min(pos, neg) < MIN_PATIENTS:
        return (
            f"positives from {pos} and negatives from {neg} patients: an interval needs at least {MIN_PATIENTS} of each"
        )
    return None


def intervals(
    labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, aucs: dict[str, float | None], spec: Spec
) -> dict:
    """95 % CIs for each per-class AUROC and for their mean: the fields an `evaluated` event gains.
    `aucs` are the point estimates (None where undefined; those get no interval). A label whose
    positives or negatives come from fewer than MIN_PATIENTS patients gets none either, with the reason
    in `auc_ci_note`; resamples without a class of a label are left out of its interval and counted
    (`auc_ci_dropped`), and the mean's interval uses only resamples in which every label of the point
    estimate's mean is defined (`auc_mean_ci_dropped`)."""
    reps = replicates(labels, [probs], patients, spec)[0]
    defined = _defined(aucs)
    ci, notes, dropped = {}, {}, {}
    for j, name in enumerate(LABELS):
        why = None if not defined[j] else _too_few(labels, patients, j)
        ci[name] = _interval(reps[:, j]) if defined[j] and why is None else None
        if why:
            notes[name] = why
        elif defined[j]:
            dropped[name] = int((~np.isfinite(reps[:, j])).sum())
    mean = _mean_over(reps, defined)
    out: dict[str, Any] = {
        "auc_ci": ci,
        "auc_mean_ci": _interval(mean),
        "auc_ci_dropped": dropped,
        "auc_mean_ci_dropped": int((~np.isfinite(mean)).sum()),
        "bootstrap": spec.record(),
    }
    if notes:
        out["auc_ci_note"] = notes
    if out["auc_mean_ci"] is None and defined.any():
        out["auc_ci_note"] = {
            **notes,
            "mean": f"only {len(mean) - out['auc_mean_ci_dropped']} of {len(mean)} "
            "resamples have a positive and a negative of every label in the mean",
        }
    return out


def _difference_rows(
    labels: np.ndarray,
    patients: np.ndarray,
    defined: np.ndarray,
    point_a: dict,
    point_b: dict,
    reps_a: np.ndarray,
    reps_b: np.ndarray,
) -> dict[str, dict[str, Any]]:
    """Per label: B minus A at the point estimates, and the 95 % CI, p-value and left-out count of the
    replicate differences; no interval for a label undefined in either or with too few patients."""
    rows: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(LABELS):
        why = None if not defined[j] else _too_few(labels, patients, j)
        if not defined[j] or why:
            delta = (point_b[name] - point_a[name]) if defined[j] else None
            rows[name] = {"delta": delta, "ci": None, "p": None, **({"note": why} if why else {})}
            continue
        d = reps_b[:, j] - reps_a[:, j]
        rows[name] = {
            "delta": point_b[name] - point_a[name],
            "ci": _interval(d),
            "p": _p_value(d),
            "dropped": int((~np.isfinite(d)).sum()),
        }
    return rows


def paired(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    patients: np.ndarray,
    aucs_a: dict,
    aucs_b: dict,
    spec: Spec,
) -> dict:
    """B minus A on the same images, over the same patient resamples: per label and for the mean
    (over the labels defined for both, the same set in every resample), the difference, its 95 % CI and
    a two-sided p-value from one rule (the CI excludes 0 exactly when p <= 0.05); the resamples left out
    (a class missing) are counted in `dropped`, and a label with too few patients has no CI (`note`)."""
    ra, rb = replicates(labels, [probs_a, probs_b], patients, spec)
    defined = _defined(aucs_a) & _defined(aucs_b)
    rows = _difference_rows(labels, patients, defined, aucs_a, aucs_b, ra, rb)
    names = [n for n, ok in zip(LABELS, defined) if ok]
    d_mean = _mean_over(rb, defined) - _mean_over(ra, defined)
    mean = {
        "delta": (float(np.mean([aucs_b[n] for n in names]) - np.mean([aucs_a[n] for n in names])) if names else None),
        "ci": _interval(d_mean),
        "p": _p_value(d_mean),
        "n_labels": len(names),
        "dropped": int((~np.isfinite(d_mean)).sum()),
    }
    return {"labels": rows, "mean": mean, "bootstrap": spec.record()}


def paired_arms(
    labels: np.ndarray, arm_a: list[np.ndarray], arm_b: list[np.ndarray], patients: np.ndarray, spec: Spec
) -> dict:
    """B minus A where each arm is several runs of one method (seeds) evaluated on the same images: a
    hierarchical bootstrap. Each resample draws the patients once (shared by every run: paired) and,
    within each arm, its seeds with replacement; an arm's AUROC in the resample is the mean over the
    seeds drawn, so the interval holds seed-to-seed variation besides the test sample's. The point
    estimate is the difference of the arms' mean AUROC over their seeds. The same fields as `paired`,
    and `seeds`: (runs in A, runs in B). One run per arm: the patient bootstrap of `paired`."""
    from engine.evaluation import metrics

    reps = replicates(labels, [*arm_a, *arm_b], patients, spec)
    ra, rb = np.stack(reps[: len(arm_a)]), np.stack(reps[len(arm_a) :])  # seeds x resamples x labels
    rng = np.random.default_rng([spec.seed, 1])
    rows_r = np.arange(spec.resamples)[:, None]
    draw_a = rng.integers(0, len(arm_a), (spec.resamples, len(arm_a)))
    draw_b = rng.integers(0, len(arm_b), (spec.resamples, len(arm_b)))
    boot_a, boot_b = ra[draw_a, rows_r].mean(axis=1), rb[draw_b, rows_r].mean(axis=1)  # resamples x labels
    point_a = [metrics.per_class_auroc(labels, s)[0] for s in arm_a]
    point_b = [metrics.per_class_auroc(labels, s)[0] for s in arm_b]
    defined = np.logical_and.reduce([_defined(a) for a in point_a + point_b])
    mean_a = {n: float(np.mean([a[n] for a in point_a])) for n, ok in zip(LABELS, defined) if ok}
    mean_b = {n: float(np.mean([b[n] for b in point_b])) for n, ok in zip(LABELS, defined) if ok}
    rows = _difference_rows(labels, patients, defined, mean_a, mean_b, boot_a, boot_b)
    names = list(mean_a)
    d_mean = _mean_over(boot_b, defined) - _mean_over(boot_a, defined)
    mean = {
        "delta": float(np.mean([mean_b[n] for n in names]) - np.mean([mean_a[n] for n in names])) if names else None,
        "ci": _interval(d_mean),
        "p": _p_value(d_mean),
        "n_labels": len(names),
        "dropped": int((~np.isfinite(d_mean)).sum()),
    }
    return {
        "labels": rows,
        "mean": mean,
        "bootstrap": {**spec.record(), "unit": f"{UNIT}, then seed within each arm"},
        "seeds": (len(arm_a), len(arm_b)),
    }


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: not tested, left out of the family):
    the k-th smallest of m is multiplied by m - k + 1, kept monotone, capped at 1. Hand-written: five
    lines, where statsmodels (its home) would be a dependency for one function."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - k) * p))
        out[i] = running
    return out
