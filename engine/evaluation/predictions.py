"""Saved predictions: `predictions/<split>.npz` in a run dir, one per `evaluated` split.

Per image: its file name, patient id, the 14 labels and the 14 predicted probabilities, in the
split's order. Any metric (the bootstrap intervals, a paired comparison, operating points) can be
recomputed from them without the model. Pure numpy: plain arrays only, read with allow_pickle=False,
so a damaged or hostile file is an error, never code.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from engine.errors import DataError
from engine.fsutil import write_atomic
from engine.labels import LABELS
from engine.rundir import PREDICTIONS_DIR

DIR = PREDICTIONS_DIR
FIELDS = ("image_ids", "patient_ids", "labels", "probs")


def path_for(run_dir: Path, split: str) -> Path:
    return Path(run_dir) / DIR / f"{split}.npz"


def save(run_dir: Path, split: str, image_ids, patient_ids, labels, probs) -> Path:
    path = path_for(run_dir, split)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        image_ids=np.asarray(image_ids, dtype=str),
        patient_ids=np.asarray(patient_ids, np.int64),
        # float64: float32 would tie probabilities near 0 and 1 and move the AUROCs
        labels=np.asarray(labels, np.uint8),
        probs=np.asarray(probs, np.float64),
        label_names=np.asarray(LABELS, dtype=str),
    )
    write_atomic(path, buf.getvalue())
    return path


def load(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a predictions file, checked for shape; DataError naming the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in (*FIELDS, "label_names")}
    except FileNotFoundError:
        raise DataError(f"{path}: not found (runs evaluated before chexui kept predictions have none)") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable predictions file ({type(e).__name__})") from None
    n = len(out["image_ids"])
    if (
        tuple(out["label_names"]) != LABELS
        or out["labels"].shape != (n, len(LABELS))
        or out["probs"].shape != (n, len(LABELS))
        or out["patient_ids"].shape != (n,)
    ):
        raise DataError(f"{path}: arrays of unexpected shape or labels")
    return out
