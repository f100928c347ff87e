"""Per-class AUROC (sklearn). An AUC is None when a label has no positives or no negatives."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from engine.labels import LABELS


def per_class_auroc(targets: np.ndarray, scores: np.ndarray) -> tuple[dict[str, float | None], float | None, list[str]]:
    """Returns ({label: auc|None}, mean over defined labels|None, reasons for the None ones)."""
    aucs: dict[str, float | None] = {}
    reasons = []
    for j, name in enumerate(LABELS):
        y = targets[:, j]
        pos = int(y.sum())
        if pos == 0 or pos == len(y):
            aucs[name] = None
            reasons.append(
                f"{name}: AUC undefined ({'no positives' if pos == 0 else 'no negatives'} among {len(y)} images)"
            )
        else:
            aucs[name] = float(roc_auc_score(y, scores[:, j]))
    defined = [v for v in aucs.values() if v is not None]
    return aucs, (float(np.mean(defined)) if defined else None), reasons
