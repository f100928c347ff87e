"""Patient-bootstrap cost on an NIH-size test split: 1,000 resamples, 25,000 images, 6,000 patients,
14 labels (the work one `evaluated` event does), on one core.

    taskset -c 0 python benchmarks/bootstrap_bench.py            # the issue's target: <= 10 s

Also times a paired comparison (`chexui compare --baseline`: two score sets on the same resamples) and
checks the fast weighted AUROC against sklearn on a few explicitly resampled copies.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

import numpy as np  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from engine.evaluation import bootstrap, metrics  # noqa: E402
from engine.labels import LABELS  # noqa: E402
from engine.runtime.cpuinfo import cpu_name, int8_isa  # noqa: E402


def nih_like(images: int, patients: int, seed: int = 0):
    """Labels at NIH's test-split prevalences (0.2 % Hernia ... 18 % Infiltration), float32-rounded
    probabilities (ties, as a model's have), patient ids with NIH's skew (a few patients, many films)."""
    rng = np.random.default_rng(seed)
    prev = np.array([0.103, 0.025, 0.119, 0.177, 0.051, 0.056, 0.013, 0.047, 0.042, 0.021, 0.022, 0.015, 0.030, 0.002])
    y = (rng.random((images, len(LABELS))) < prev).astype(np.uint8)
    probs = (1 / (1 + np.exp(-(1.2 * y + rng.normal(size=y.shape) - 2)))).astype(np.float32).astype(np.float64)
    weights = rng.pareto(1.5, patients) + 1
    pat = np.concatenate([np.arange(patients), rng.choice(patients, images - patients, p=weights / weights.sum())])
    return y, probs, pat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=25_000)
    ap.add_argument("--patients", type=int, default=6_000)
    ap.add_argument("--resamples", type=int, default=1_000)
    args = ap.parse_args()
    y, probs, pat = nih_like(args.images, args.patients)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"CPU: {cpu_name()} (int8: {int8_isa()}); cores available to this process: {cores}")
    print(
        f"test split: {len(y):,} images, {len(np.unique(pat)):,} patients, {len(LABELS)} labels; "
        f"{args.resamples:,} patient resamples"
    )
    aucs, mean, _ = metrics.per_class_auroc(y, probs)
    spec = bootstrap.Spec(args.resamples, 0)
    t0 = time.perf_counter()
    res = bootstrap.intervals(y, probs, pat, aucs, spec)
    t_ci = time.perf_counter() - t0
    print(
        f"intervals (one evaluated event): {t_ci:.2f} s; mean AUROC {mean:.4f} "
        f"95% CI {res['auc_mean_ci'][0]:.4f}-{res['auc_mean_ci'][1]:.4f}"
    )
    other = np.clip(probs + np.random.default_rng(1).normal(0, 0.05, probs.shape), 0, 1)
    t0 = time.perf_counter()
    pr = bootstrap.paired(y, probs, other, pat, aucs, metrics.per_class_auroc(y, other)[0], spec)
    print(
        f"paired comparison (two score sets): {time.perf_counter() - t0:.2f} s; mean difference "
        f"{pr['mean']['delta']:+.4f} ({pr['mean']['ci'][0]:+.4f} to {pr['mean']['ci'][1]:+.4f}) "
        f"p={pr['mean']['p']:.3f} (0: below 1/{args.resamples})"
    )
    # correctness: three resamples recomputed by sklearn on explicitly repeated images
    small = bootstrap.Spec(3, 5)
    reps = bootstrap.replicates(y, [probs], pat, small)[0]
    codes, counts = bootstrap.patient_counts(pat, 3, 5)
    worst = 0.0
    for b in range(3):
        idx = np.repeat(np.arange(len(y)), counts[b, codes].astype(int))
        for j in (0, 3, 13):
            worst = max(worst, abs(reps[b, j] - roc_auc_score(y[idx, j], probs[idx, j])))
    print(f"largest difference from sklearn on resampled copies: {worst:.2e}")
    print(f"target <= 10 s for the intervals on one core: {'met' if t_ci <= 10 else 'NOT met'}")


if __name__ == "__main__":
    main()
