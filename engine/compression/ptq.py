"""Post-training static int8 quantization (PT2E) of a trained model, `chexui compress --ptq`: observers
calibrated on a seeded sample of the training split, then converted. The mechanics are engine/compression/quant.py."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.compression import quant
from engine.compression.base import Method, register
from engine.data.batches import eval_batches, to_input
from engine.errors import StorageError
from engine.models.chexnet import build_float


def calibration_rows(train_rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded sample of `n` training rows (all of them when there are fewer), in dataset order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train_rows, size=min(n, len(train_rows)), replace=False))


@register
class PTQ(Method):
    name, enabled_by = "ptq", "compress.ptq"
    makes_int8 = True
    artifacts = ("int8", "onnx_int8")

    def int8(self, run: Any) -> nn.Module:
        # run.model: the model the run ships (a channel-pruned run's smaller one), not the one it trained
        c, t = self.cfg, self.ctx.cfg["train"]
        rows = calibration_rows(run.data.split["train"], c["calibration_images"], t["seed"])
        _, batches = eval_batches(len(rows), t["batch_size"] * 2, 1, 0)
        inputs = (to_input(run.data.images[rows[pos]][0], torch.device("cpu")) for pos in batches)
        t0 = time.perf_counter()
        cfg = self.ctx.cfg
        int8 = quant.post_training(run.model, c["scope"], cfg["data"]["image_size"], inputs, cfg["model"]["arch"])
        run.state.wall_time_s += time.perf_counter() - t0  # compression time counts as the run's time
        self.ctx.log(
            f"post-training int8 ({c['scope']}): calibrated on {len(rows)} training images in "
            f"{time.perf_counter() - t0:.1f}s"
        )
        return int8

    no_twin = "post-training int8: the program has no gradients and no fake-quantized twin"

    @classmethod
    def companion(cls, cfg: dict, ck: dict, where: str) -> tuple[str, nn.Module] | None:
        return f"fp32 model of {where} (before post-training quantization)", build_float(
            cfg["model"]["arch"], ck["model"]
        )

    @classmethod
    def rebuild_int8(cls, cfg: dict, ck: dict, where: str) -> nn.Module:
        raise StorageError(
            f"{where}: no int8 graph (a post-training int8 run made before chexui kept it): its int8 "
            "model cannot be rebuilt; use --artifact onnx_int8, or compress the parent again"
        )
