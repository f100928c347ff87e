"""Compressed model artifacts in a run's `export/` dir, and loading them back for inference.

- `model_fp32.pt`   the float model: {"format", "arch", "image_size", "model": state_dict}
- `model_sparse.pt` (pruned runs) the same weights with every tensor that has zeros stored as a packed
                    bit mask plus its nonzero values, only where that is smaller than the dense tensor
- `model_int8.pt`   (QAT runs) the converted int8 model as TorchScript: `torch.jit.load` is all it needs

The fp32 and sparse files are plain torch.save dicts of tensors, strings and ints (weights_only loads).
Each artifact is reported with its file bytes and its gzip bytes (the study compared compressed storage).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine import checkpoint

FP32, SPARSE, INT8 = "fp32", "sparse", "int8"
FILES = {FP32: "model_fp32.pt", SPARSE: "model_sparse.pt", INT8: "model_int8.pt"}


def to_sparse(state: dict[str, torch.Tensor]) -> dict:
    """Split a state_dict into bit-mask + nonzero-values tensors (where that saves bytes) and dense ones."""
    sparse, dense = {}, {}
    for name, t in state.items():
        t = t.detach().cpu()
        if t.is_floating_point() and t.numel() >= 64:
            nz = t != 0
            n_nz = int(nz.sum())
            if n_nz * t.element_size() + (t.numel() + 7) // 8 < t.numel() * t.element_size():
                bits = np.packbits(nz.flatten().numpy())
                sparse[name] = {"shape": list(t.shape), "mask": torch.from_numpy(bits), "values": t[nz].clone()}
                continue
        dense[name] = t
    return {"sparse": sparse, "dense": dense}


def from_sparse(packed: dict) -> dict[str, torch.Tensor]:
    state = dict(packed["dense"])
    for name, s in packed["sparse"].items():
        n = int(np.prod(s["shape"]))
        nz = torch.from_numpy(np.unpackbits(s["mask"].numpy(), count=n).astype(bool))
        t = torch.zeros(n, dtype=s["values"].dtype)
        t[nz] = s["values"]
        state[name] = t.reshape(s["shape"])
    return state


def gzip_bytes(path: Path) -> int:
    return len(gzip.compress(path.read_bytes(), compresslevel=6))


def artifact(kind: str, path: Path, run_dir: Path) -> dict:
    return {"kind": kind, "path": str(path.relative_to(run_dir)), "bytes": path.stat().st_size,
            "gzip_bytes": gzip_bytes(path)}


def export_models(run_dir: Path, model: nn.Module, arch: str, image_size: int,
                  pruned: bool, qat_model: nn.Module | None) -> list[dict]:
    """Write the run's artifacts (rank 0); returns the `exported` event's list."""
    out = run_dir / "export"
    out.mkdir(exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"arch": arch, "image_size": image_size}
    checkpoint.save_atomic({"format": "chexui-fp32/1", **meta, "model": state}, out / FILES[FP32])
    arts = [artifact(FP32, out / FILES[FP32], run_dir)]
    if pruned:
        checkpoint.save_atomic({"format": "chexui-sparse/1", **meta, **to_sparse(state)}, out / FILES[SPARSE])
        arts.append(artifact(SPARSE, out / FILES[SPARSE], run_dir))
    if qat_model is not None:
        from engine import quant
        quant.save_int8(quant.convert(qat_model), image_size, out / FILES[INT8])
        arts.append(artifact(INT8, out / FILES[INT8], run_dir))
    return arts


def load_model(run_dir: Path, art: dict) -> nn.Module:
    """An artifact as a module ready for inference (int8 on the CPU only: x86 kernels)."""
    path = run_dir / art["path"]
    if art["kind"] == INT8:
        from engine import quant
        return quant.load_int8(path)
    from engine.models import build_model
    saved = checkpoint.load(path)
    state = saved["model"] if art["kind"] == FP32 else from_sparse(saved)
    model = build_model(saved["arch"], "none")
    model.load_state_dict(state)
    return model.eval()
