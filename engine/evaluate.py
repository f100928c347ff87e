"""Predictions and AUROC: the engine's validation/test step and `chexui eval` (any NIH-layout dataset)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine import cache, checkpoint, config, metrics, nih
from engine.data import Images, eval_batches, to_input
from engine.dist import Dist
from engine.errors import UserError
from engine.labels import LABELS
from engine.models import build_model


@torch.no_grad()
def predict_logits(model: nn.Module, images, rows: np.ndarray, d: Dist, batch_size: int,
                   channels_last: bool = False, autocast=nullcontext, device: torch.device | None = None) -> np.ndarray:
    """Logits for `rows` in `rows` order: each image exactly once over all ranks (no sampler padding),
    gathered to every rank. `device` overrides the rank's device (the int8 model runs on the CPU)."""
    model.eval()
    device = device or d.device
    mine, batches = eval_batches(len(rows), batch_size, d.world, d.rank)
    out = []
    for pos in batches:
        x, _, _ = images[rows[pos]]
        with autocast():
            out.append(model(to_input(x, device, None, channels_last)).float().cpu())
    logits = torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)
    full = np.zeros((len(rows), len(LABELS)), np.float32)
    for positions, part in d.all_gather_object((mine, logits)):
        full[positions] = part
    return full


def auroc_from_logits(y: np.ndarray, logits: np.ndarray) -> tuple[dict, float | None, list[str]]:
    """Per-class AUROC of sigmoid(logits) (float64: no ties made by float32 rounding near 0 and 1)."""
    return metrics.per_class_auroc(y, 1 / (1 + np.exp(-logits.astype(np.float64))))


def load_best(run_dir: Path) -> tuple[torch.nn.Module, dict]:
    cfg = config.load_run_config(run_dir / "config.toml")
    for name in ("best.pt", "last.pt"):
        p = run_dir / "checkpoints" / name
        if p.is_file():
            model = build_model(cfg["model"]["arch"], "none")
            model.load_state_dict(checkpoint.load(p)["model"])
            return model.eval(), cfg
    raise UserError(f"{run_dir / 'checkpoints'}: no best.pt or last.pt (has the run trained an epoch?)")


def evaluate_run(run_dir: Path, data_root: str, split: str = "test") -> dict:
    model, cfg = load_best(run_dir)
    index = nih.index_dataset(data_root)
    size = cfg["data"]["image_size"]
    rows = np.arange(len(index)) if split == "all" else nih.make_split(index, cfg["data"])["test"]
    mem = cache.prepare(index, size) if cfg["data"]["cache"] else None
    logits = predict_logits(model, Images(index, size, mem), rows, Dist(), batch_size=64)
    auc, mean, reasons = auroc_from_logits(index.labels[rows], logits)
    return {"run": run_dir.name, "data": str(index.root), "split": split, "n": int(len(rows)),
            "auc": auc, "auc_mean": mean, "undefined": reasons}
