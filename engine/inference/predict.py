"""`chexui predict`: the 14 probabilities of a trained run's model for image files (PNG, JPEG, DICOM).

The model is what the run ships (`evaluate.shipped_models`: a QAT/PTQ run's int8 model, from the graph
kept in its checkpoint, else its best fp32 model) or the exported artifact named by `--artifact`; images
go through the training path's decode (`engine.data.images.load` -> `nih.resized`) and normalisation
(`data.to_input`), in batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import compression, rundir
from engine.data import images
from engine.data.batches import to_input
from engine.errors import DataError, UserError
from engine.evaluation import operating
from engine.evaluation.evaluate import probabilities, shipped_models
from engine.inference import export
from engine.labels import LABELS


def model_for(run_dir: Path, cfg: dict, artifact: str | None, trust: bool = False) -> tuple[str, torch.nn.Module]:
    arts = export.recorded(run_dir)
    if artifact is None:
        if export.INT8 not in arts or compression.int8_maker(cfg) is None:
            return shipped_models(run_dir, cfg, trust)[0]
        artifact = export.INT8  # what a QAT/PTQ run ships (without its QAT twin, which eval adds)
    if artifact not in arts:
        raise UserError(f"--artifact {artifact}: run {run_dir.name} exported {', '.join(arts) or 'nothing'}")
    how = (
        "its graph, as kept in checkpoints/best.pt"
        if artifact == export.INT8
        else "sha256 checked"
        if not trust
        else "sha256 not checked: --trust"
    )
    return f"{artifact} artifact {arts[artifact]['path']} ({how})", export.load_model(
        run_dir, arts[artifact], trust, cfg
    )


@torch.no_grad()
def predict(
    run_dir: Path,
    paths: list[str],
    artifact: str | None = None,
    trust: bool = False,
    batch_size: int = 32,
    progress=None,
    calibrate: bool = False,
) -> dict:
    """{"model", "image_size", "operating_point", "calibrated", "rows": [{"file", "probs": [14],
    "calls": [14 x true/false/null], "positive": [names]}], "unreadable": [{"file", "reason"}]}.
    Calls use the run's thresholds (chosen on its validation split, `operating_points` event) on the raw
    probabilities; `calibrate` shows probabilities after the run's per-label temperatures (also fitted on
    validation), which moves no call."""
    files = images.find(paths)
    if not files:
        raise UserError(f"no image files (PNG, JPEG, DICOM) in {', '.join(map(str, paths))}")
    op = operating.recorded(run_dir)
    if calibrate and not (op and op.get("temperatures")):
        raise UserError(
            f"--calibrate: run {run_dir.name} has no temperatures (they are fitted on validation "
            "at the end of a run; this one did not finish, or predates them)"
        )
    cfg = rundir.load_config(run_dir)
    size = cfg["data"]["image_size"]
    loaded: list = []  # (name, model), loaded with the first readable batch
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, str]] = []
    batch: list[np.ndarray] = []
    names: list[Path] = []

    def flush() -> None:
        if batch:
            if not loaded:
                loaded.append(model_for(run_dir, cfg, artifact, trust))
                loaded[0][1].eval()
            model = loaded[0][1]
            logits = model(to_input(torch.from_numpy(np.stack(batch)), torch.device("cpu"))).float().numpy()
            probs = probabilities(logits)
            shown = operating.calibrated(probs, op["temperatures"]) if op and calibrate else probs
            decided: list = operating.calls(probs, op["thresholds"]) if op else [[None] * len(LABELS)] * len(probs)
            rows.extend(
                {"file": str(f), "probs": p.tolist(), "calls": c, "positive": [name for name, v in zip(LABELS, c) if v]}
                for f, p, c in zip(names, shown, decided)
            )
            batch.clear()
            names.clear()

    for i, f in enumerate(files):
        try:
            batch.append(images.load(f, size))
            names.append(f)
        except (DataError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
            bad.append({"file": str(f), "reason": str(e) if isinstance(e, DataError) else f"{f}: {e.strerror}"})
        if len(batch) == batch_size:
            flush()
        if progress:
            progress(i + 1, len(files))
    flush()
    if artifact is not None and not loaded:  # (say a wrong --artifact even when no file was readable)
        model_for(run_dir, cfg, artifact, trust)
    return {
        "run": run_dir.name,
        "model": loaded[0][0] if loaded else None,
        "image_size": size,
        "operating_point": {"rule": op["rule"], "thresholds": op["thresholds"]} if op else None,
        "calibrated": calibrate,
        "rows": rows,
        "unreadable": bad,
    }
