"""Evaluate a trained run's best model on any NIH-layout dataset (single process)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine import cache, checkpoint, config, metrics, nih
from engine.data import Images
from engine.dist import Dist
from engine.errors import UserError
from engine.models import build_model
from engine.train import predict_logits


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
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    auc, mean, reasons = metrics.per_class_auroc(index.labels[rows], probs)
    return {"run": run_dir.name, "data": str(index.root), "split": split, "n": int(len(rows)),
            "auc": auc, "auc_mean": mean, "undefined": reasons}
