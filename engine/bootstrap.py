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
estimates stay sklearn's (engine/metrics.py); tests check the two agree.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from engine.labels import LABELS

UNIT = "patient"
LEVEL = 0.95  # two-sided confidence level of every interval
BLOCK = 16    # resamples per vectorised block: 16 x 25,000 float32 fits in cache (fastest measured)


@dataclass(frozen=True)
class Spec:
    resamples: int = 1000
    seed: int = 0

    @classmethod
    def from_config(cls, eval_cfg: dict) -> "Spec | None":
        """From a run config's [eval] section; None when it asks for no intervals (0 resamples)."""
        n = eval_cfg["bootstrap_resamples"]
        return cls(n, eval_cfg["bootstrap_seed"]) if n else None

    def record(self) -> dict:
        """What an `evaluated` event says about how its intervals were made."""
        return {"resamples": self.resamples, "seed": self.seed, "unit": UNIT, "method": "percentile",
                "level": LEVEL}


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
        self.neg_codes = codes[~pos][neg_order]   # patient of each negative, in score order
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
    preps = [[_Label(np.asarray(s[:, j], np.float64), labels[:, j], codes) for j in range(labels.shape[1])]
             for s in scores]
    out = [np.empty((spec.resamples, labels.shape[1])) for _ in scores]
    for b0 in range(0, spec.resamples, BLOCK):
        block = counts[b0:b0 + BLOCK]
        for prep, res in zip(preps, out):
            for j, lab in enumerate(prep):
                res[b0:b0 + BLOCK, j] = lab.auroc(block)
    return out


def _mean_over(reps: np.ndarray, defined: np.ndarray) -> np.ndarray:
    """Per-resample mean over the labels defined in the point estimate (a resample that lost every
    positive of a rare label averages the others)."""
    if not defined.any():
        return np.full(len(reps), np.nan)
    with warnings.catch_warnings():  # "mean of empty slice": a resample with none of them, NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(reps[:, defined], axis=1)


def _interval(values: np.ndarray) -> list[float] | None:
    v = values[np.isfinite(values)]
    if len(v) < 2:
        return None
    lo, hi = np.percentile(v, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)])
    return [float(lo), float(hi)]


def _defined(aucs: dict[str, float | None]) -> np.ndarray:
    return np.array([aucs.get(name) is not None for name in LABELS])


def intervals(labels: np.ndarray, probs: np.ndarray, patients: np.ndarray, aucs: dict[str, float | None],
              spec: Spec) -> dict:
    """95 % CIs for each per-class AUROC and for their mean: the fields an `evaluated` event gains.
    `aucs` are the point estimates (None where undefined; those get no interval)."""
    reps = replicates(labels, [probs], patients, spec)[0]
    defined = _defined(aucs)
    ci = {name: (_interval(reps[:, j]) if defined[j] else None) for j, name in enumerate(LABELS)}
    return {"auc_ci": ci, "auc_mean_ci": _interval(_mean_over(reps, defined)), "bootstrap": spec.record()}


def _p_value(delta: np.ndarray) -> float | None:
    """Two-sided bootstrap p-value of "no difference": twice the smaller share of resamples on either
    side of 0, capped at 1. It agrees with the percentile CI (p < 0.05 where the 95 % CI excludes 0);
    0 means fewer than 1 in `resamples` (shown as "p<1/R")."""
    d = delta[np.isfinite(delta)]
    if not len(d):
        return None
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))


def paired(labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, patients: np.ndarray,
           aucs_a: dict, aucs_b: dict, spec: Spec) -> dict:
    """B minus A on the same images, over the same patient resamples: per label and for the mean
    (over the labels defined for both), the difference, its 95 % CI and a two-sided p-value."""
    ra, rb = replicates(labels, [probs_a, probs_b], patients, spec)
    defined = _defined(aucs_a) & _defined(aucs_b)
    rows = {}
    for j, name in enumerate(LABELS):
        if not defined[j]:
            rows[name] = {"delta": None, "ci": None, "p": None}
            continue
        d = rb[:, j] - ra[:, j]
        rows[name] = {"delta": aucs_b[name] - aucs_a[name], "ci": _interval(d), "p": _p_value(d)}
    names = [n for n, ok in zip(LABELS, defined) if ok]
    d_mean = _mean_over(rb, defined) - _mean_over(ra, defined)
    mean = {"delta": (float(np.mean([aucs_b[n] for n in names]) - np.mean([aucs_a[n] for n in names]))
                      if names else None),
            "ci": _interval(d_mean), "p": _p_value(d_mean), "n_labels": len(names)}
    return {"labels": rows, "mean": mean, "bootstrap": spec.record()}
