"""Compressed model artifacts in a run's `export/` dir, and loading them back for inference.

- `model_fp32.pt`   the float model: {"format", "arch", "image_size", "model": state_dict}, and for a
                    channel-pruned model "channels": {layer: [in, out]} where its sizes are not the
                    architecture's (torch + torchvision rebuild it: docs/load_model.py)
- `model_sparse.pt` (pruned runs) the same weights with every tensor that has zeros stored as a packed
                    bit mask plus its nonzero values, only where that is smaller than the dense tensor
- `model_int8.pt2`  (QAT and PTQ runs) the converted int8 model as a `torch.export` program, for users to
                    deploy: torch alone loads it. chexui never loads it (a program file can run code):
                    it runs the same graph from the data record kept in best.pt (`int8_model`)
- `model_fp32.onnx`, `model_int8.onnx` (`export.onnx`, with the `chexui[onnx]` extra) the same models as
                    ONNX, the int8 one in QDQ form (`engine.inference.onnx_export`): onnxruntime alone runs them

The fp32 and sparse files are plain torch.save dicts of tensors, strings and ints (weights_only loads).
Each artifact is reported with its file bytes and its gzip bytes (the study compared compressed storage).

Loading back (`load_model`) treats a run dir as untrusted: an artifact is read only from the run's
export/ dir, as a regular file, after its sha256 check against the `exported` event (which catches a
changed file, not an attacker: the event is in the same dir, so `--trust` may skip it); the fp32 and
sparse files with `torch.load(weights_only=True)`, the ONNX files in onnxruntime from their bytes
(self-contained only: a tensor kept in another file is refused), and the int8 model from the graph
record in the run's best checkpoint (data: only tensor operations admitted), never from the .pt2.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine import rundir
from engine.errors import StorageError
from engine.events import ARTIFACTS
from engine.fsutil import sha256
from engine.models.chexnet import build_float, build_model, counts_of_state
from engine.training import checkpoint

FP32, SPARSE, INT8, ONNX_FP32, ONNX_INT8 = "fp32", "sparse", "int8", "onnx_fp32", "onnx_int8"
FILES = {k: a.file for k, a in ARTIFACTS.items()}  # (the table: engine/events.py)
CPU_ONLY = tuple(k for k, a in ARTIFACTS.items() if a.cpu_only)
EVERY_RUN = (FP32, ONNX_FP32)  # the other kinds come with the compression methods that declare them


def kinds(methods) -> set[str]:
    """The artifact kinds a run with these compression methods exports (ONNX ones if export.onnx)."""
    return {*EVERY_RUN, *(k for method in methods for k in method.artifacts)}


OPERATING_FILE = "chexui_operating_points.json"  # a .pt2 extra file and an ONNX metadata key


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
    return {
        "kind": kind,
        "path": str(path.relative_to(run_dir)),
        "bytes": path.stat().st_size,
        "gzip_bytes": gzip_bytes(path),
        "sha256": sha256(path),
    }


def recorded(run_dir: Path) -> dict[str, dict]:
    """The artifacts of the run's last `exported` event by kind (empty when it has none)."""

    ex = rundir.last(rundir.events(run_dir), "exported")
    return {a["kind"]: a for a in (ex or {}).get("artifacts", [])}


def verified_path(run_dir: Path, art: dict, trust: bool = False) -> Path:
    """The artifact's file, only if it lies in the run's export/ dir, is a regular file and has the
    sha256 recorded in the `exported` event. The hash catches a file changed or replaced since export;
    it proves nothing against someone who wrote the run dir (they wrote the event too), so nothing
    loaded here can run code whatever the hash: `trust` skips the hash and nothing else."""
    export_dir = (run_dir / rundir.EXPORT_DIR).resolve()
    path = (run_dir / str(art.get("path", ""))).resolve()
    if not path.is_relative_to(export_dir) or art.get("kind") not in FILES or path.name != FILES[art["kind"]]:
        raise StorageError(
            f"{run_dir / 'events.jsonl'}: artifact path {art.get('path')!r} is not a file of "
            f"{export_dir}; refusing to load it"
        )
    if not path.is_file():
        raise StorageError(f"{path}: exported file is missing")
    if not trust:
        want = art.get("sha256")
        if not want:
            raise StorageError(
                f"{path}: no sha256 was recorded for it (exported by an older chexui); pass --trust to load it anyway"
            )
        if sha256(path) != want:
            raise StorageError(
                f"{path}: sha256 differs from the one recorded at export: the file was "
                "changed or replaced; refusing to load it (--trust to override)"
            )
    return path


def export_models(
    run_dir: Path,
    model: nn.Module,
    arch: str,
    image_size: int,
    kinds: set[str],
    int8_model: nn.Module | None,
    onnx: bool = True,
    log=print,
    operating: dict | None = None,
) -> list[dict]:
    """Write the run's artifacts of `kinds` (rank 0) from its float model and, for QAT/PTQ runs, its
    converted int8 model; returns the `exported` event's list. `operating` (the run's thresholds and
    temperatures) travels inside every file: a checkpoint key, a .pt2 extra file, ONNX metadata."""
    out = run_dir / rundir.EXPORT_DIR
    out.mkdir(exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    meta = {"arch": arch, "image_size": image_size, **({"operating_points": operating} if operating else {})}
    extra = {OPERATING_FILE: json.dumps(operating)} if operating else None
    # a channel-pruned model's layer sizes as data ([in, out] per layer that is not the architecture's
    # own): torch + torchvision rebuild it from them (docs/load_model.py), chexui from the same record
    dense = build_model(arch, "none")
    counts = counts_of_state(dense, state)
    del dense
    fp32 = {"format": "chexui-fp32/1", **meta, **({"channels": counts} if counts else {}), "model": state}
    checkpoint.save_atomic(fp32, out / FILES[FP32])
    written = [(FP32, out / FILES[FP32])]
    if SPARSE in kinds:
        checkpoint.save_atomic({"format": "chexui-sparse/1", **meta, **to_sparse(state)}, out / FILES[SPARSE])
        written.append((SPARSE, out / FILES[SPARSE]))
    program = None
    if INT8 in kinds and int8_model is not None:
        from engine.compression import quant

        program = quant.program(int8_model, image_size)
        quant.save_int8(program, image_size, out / FILES[INT8], extra)
        written.append((INT8, out / FILES[INT8]))
    if onnx and kinds & {ONNX_FP32, ONNX_INT8}:
        from engine.inference import onnx_export

        if onnx_export.missing():
            log(f"ONNX artifacts skipped: {', '.join(onnx_export.missing())} not installed; {onnx_export.HINT}")
        else:
            if ONNX_FP32 in kinds:
                onnx_export.save(build_float(arch, state), image_size, out / FILES[ONNX_FP32], extra)
                written.append((ONNX_FP32, out / FILES[ONNX_FP32]))
            if ONNX_INT8 in kinds and program is not None:
                onnx_export.save(program, image_size, out / FILES[ONNX_INT8], extra)
                written.append((ONNX_INT8, out / FILES[ONNX_INT8]))
    # gzip sizes and hashes on two threads (zlib and hashlib release the GIL): a ResNet50's five files
    # are about 300 MB to compress
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(lambda kp: artifact(kp[0], kp[1], run_dir), written))


def cost(model: nn.Module, image_size: int) -> dict[str, int]:
    """MACs (torch's own flop counter, FLOPs / 2) and parameters of one image through `model`, counted on
    a copy on the meta device (shapes only: no memory, no arithmetic)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(1, 3, image_size, image_size, device="meta"))
    return {"macs": int(counter.get_total_flops()) // 2, "params": sum(p.numel() for p in model.parameters())}


def best_checkpoint(run_dir: Path) -> tuple[Path, dict]:
    """The run's best checkpoint (its last when it has no best yet), read with weights_only."""
    for name in (rundir.BEST, rundir.LAST):
        p = run_dir / name
        if p.is_file():
            return p, checkpoint.load(p)
    raise StorageError(f"{run_dir / 'checkpoints'}: no best.pt or last.pt (has the run trained an epoch?)")


def int8_model(run_dir: Path, cfg: dict, ck: dict | None = None) -> nn.Module:
    """The run's int8 model: the converted graph kept as data in its best checkpoint (`int8_graph`,
    written with the int8 artifact; `quant.from_graph_record` admits only tensor operations), i.e. the
    graph `model_int8.pt2` holds, with the same outputs. A QAT run from before chexui kept the record:
    its fake-quantized model converted again (seconds to a minute; the method's `rebuild_int8`). Nothing
    read from the run dir is run."""
    from engine import compression
    from engine.compression import quant

    path = run_dir / rundir.BEST
    if ck is None:
        path, ck = best_checkpoint(run_dir)
    if "int8_graph" in ck:
        try:
            return quant.from_graph_record(ck["int8_graph"])
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise StorageError(
                f"{path}: its int8 graph is not one chexui wrote ({str(e)[:160]}); refusing to run it"
            ) from None
    maker = compression.int8_maker(cfg)
    if maker is not None:
        return maker.rebuild_int8(cfg, ck, str(path))
    raise StorageError(f"run {run_dir.name} is neither a QAT nor a post-training int8 run: it has no int8 model")


def load_model(run_dir: Path, art: dict, trust: bool = False, cfg: dict | None = None) -> nn.Module:
    """An artifact as a module ready for inference (int8 and ONNX on the CPU only): the fp32/sparse
    files with weights_only, the ONNX files from their checked bytes in onnxruntime, and the int8 kind
    from the graph record in the best checkpoint (`int8_model`); `verified_path`'s checks first."""
    path = verified_path(run_dir, art, trust)
    if art["kind"] == INT8:
        return int8_model(run_dir, cfg or rundir.load_config(run_dir))
    if art["kind"] in (ONNX_FP32, ONNX_INT8):
        from engine.inference import onnx_export

        return onnx_export.Session(path)
    saved = checkpoint.load(path)
    try:
        state = saved["model"] if art["kind"] == FP32 else from_sparse(saved)
        return build_float(str(saved["arch"]), state, counts=saved.get("channels"))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:  # a file of another shape than chexui writes
        raise StorageError(
            f"{path}: not a model file chexui wrote ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160] if str(e) else ''})"
        ) from None
