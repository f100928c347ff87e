"""Inference benchmark of a run's exported models (`chexui bench RUN`).

For each artifact of the run's `exported` event (the int8 one as its graph kept in the run's best
checkpoint: chexui never loads a .pt2 from a run dir): file and gzip bytes, the test AUROC the engine measured
for that very artifact, CPU latency at batch 1 (median) and throughput at batch 32 at the run's image
size, and on the GPU when there is one fp32 and bf16 latency at batch 1 and throughput at batch 256 (the
int8 model uses x86 CPU kernels only, the ONNX files run in onnxruntime on the CPU). Inputs are
random: timing does not depend on the pixels. The sparse artifact runs with dense kernels (its zeros
save storage, not time) - measuring it says so.
"""

from __future__ import annotations

import copy
import importlib
import os
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from engine import rundir
from engine.errors import UserError
from engine.events import ARTIFACT_SPLITS
from engine.inference import export
from engine.runtime.cpuinfo import cpu_name, int8_isa


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_model(
    model, size: int, device: torch.device, batch: int, min_reps: int, budget_s: float, channels_last: bool = False
) -> list[float]:
    """Seconds per forward pass, after a warm-up: at least `min_reps`, more while within `budget_s`."""
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    for _ in range(2 if device.type == "cuda" else 1):
        model(x)
    _sync(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or (time.perf_counter() - start < budget_s and len(times) < 20):
        t0 = time.perf_counter()
        model(x)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def measure(model, size: int, device: torch.device) -> dict:
    b1 = time_model(model, size, device, 1, 5, 2.0)
    b32 = time_model(model, size, device, 32, 3, 6.0)
    return {"latency_b1_ms": 1000 * statistics.median(b1), "throughput_b32": 32 / statistics.median(b32)}


# a GPU's throughput batch: large enough to fill an H100 with a 224 px DenseNet121
GPU_BATCH = 256


def measure_gpu(model, size: int, gpu: torch.device, batch: int = GPU_BATCH, budget_s: float = 6.0) -> dict:
    """fp32 and bf16 (autocast, as training runs) latency at batch 1 (median ms) and images/s at `batch`
    (`throughput`, `bf16_throughput`); the model in channels_last, the layout cuDNN's fastest convolutions
    use. (Any device works: the CPU suite runs it.)"""
    model = model.to(gpu, memory_format=torch.channels_last)
    out: dict[str, float] = {"batch": batch}
    for prefix, ctx in (("", nullcontext), ("bf16_", lambda: torch.autocast(gpu.type, dtype=torch.bfloat16))):
        with ctx():
            b1 = time_model(model, size, gpu, 1, 10, budget_s / 3, channels_last=True)
            big = time_model(model, size, gpu, batch, 5, budget_s, channels_last=True)
        out |= {
            f"{prefix}latency_b1_ms": 1000 * statistics.median(b1),
            f"{prefix}throughput": batch / statistics.median(big),
        }
    return out


def exported(run_dir: Path) -> tuple[list[dict], dict[str, dict]]:
    events = rundir.events(run_dir)
    ex = rundir.last(events, "exported")
    if ex is None:
        raise UserError(f"run {run_dir.name} has no exported models (a run exports when it completes)")
    evals = {e["split"]: e for e in events if e["type"] == "evaluated"}
    return ex["artifacts"], evals


def compiled(model: Any, int8: bool) -> Any:
    """The model through torch.compile (Inductor) with freezing: BatchNorm folded, weights constant, the
    int8 quantize/dequantize patterns of a PT2E program lowered to oneDNN int8 kernels by torchao's passes.
    Eager PT2E int8 is a reference graph (dequantize, then fp32 conv) and slower than fp32: only compiled
    is it int8 speed."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    if int8:
        # importing torchao's x86 quantizer registers its Inductor passes (int8 weight packing, the q/dq
        # lift-up); without them Inductor compiles the program's convolutions in fp32
        importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    return torch.compile(model.module if int8 else model.eval())


RUNTIMES = {export.ONNX_FP32: "onnxruntime", export.ONNX_INT8: "onnxruntime"}


def dense_reference(run_dir: Path) -> Path | None:
    """The dense run a compressed run descends from: its parent's parent ... up to a run without one
    (a run dir named in `run_started.parent`, where chexui compress recorded it), or None."""
    seen = {run_dir.resolve()}
    here = run_dir
    while True:
        started = rundir.first(rundir.events(here), "run_started") or {}
        parent = started.get("parent")
        path = parent.get("path") if isinstance(parent, dict) else None
        if not isinstance(path, str) or not (Path(path) / rundir.EVENTS_FILE).is_file():
            return here if here != run_dir else None
        here = Path(path)
        if here.resolve() in seen:  # (a loop of hand-made records)
            return None
        seen.add(here.resolve())


def bench_run(
    run_dir: Path, image_size: int, trust: bool = False, compile: bool = True, dense: Path | None = None
) -> dict:
    """Rows: each artifact as loaded (PyTorch eager, or onnxruntime for the ONNX files), with `compile`
    the fp32 and PT2E int8 ones compiled too, and the ONNX files in OpenVINO when it is installed;
    `x_fp32_speed` = b32 throughput over the fastest fp32 row's (the optimised baseline: compiled
    PyTorch, onnxruntime or OpenVINO). With a `dense` run (a compressed run's dense ancestor by default,
    `dense_reference`), its fp32 files are measured the same way and each row gets `x_dense_speed`:
    b32 throughput over the dense fp32 model's in the same runtime."""
    res = _bench_rows(run_dir, image_size, trust, compile)
    if dense is None:
        dense = dense_reference(run_dir)
    reference = None
    if dense is not None and dense.resolve() != run_dir.resolve():
        try:
            ref = _bench_rows(dense, image_size, trust, compile, kinds=(export.FP32, export.ONNX_FP32))
        except UserError as e:  # (a dense run that exported nothing: no x dense column)
            res["skipped"].append(f"x dense speed: {e}")
            return {**res, "dense": None}
        by_runtime = {r["runtime"]: r for r in ref["artifacts"]}
        for r in res["artifacts"]:
            base = by_runtime.get(r["runtime"])
            r["x_dense_speed"] = r["cpu"]["throughput_b32"] / base["cpu"]["throughput_b32"] if base else None
            r["x_dense_macs"] = r["macs"] / base["macs"] if base and r.get("macs") and base.get("macs") else None
        reference = {"run": dense.name, "artifacts": ref["artifacts"]}
    return {**res, "dense": reference}


def _bench_rows(run_dir: Path, image_size: int, trust: bool, compile: bool, kinds: tuple[str, ...] = ()) -> dict:
    from engine.inference import onnx_export

    cfg = rundir.load_config(run_dir)
    arts, evals = exported(run_dir)
    if kinds:
        arts = [a for a in arts if a["kind"] in kinds]
    for a in arts:  # every file checked before any is measured: a changed last one fails now, not minutes in
        export.verified_path(run_dir, a, trust)
    gpu = torch.device("cuda") if torch.cuda.is_available() else None
    fp32_bytes = next((a["bytes"] for a in arts if a["kind"] == export.FP32), None)
    rows, skipped = [], []
    for a in arts:
        if a["kind"] in RUNTIMES and onnx_export.missing():
            skipped.append(f"{a['path']}: {', '.join(onnx_export.missing())} not installed; {onnx_export.HINT}")
            continue
        ev = next((evals[s] for s in ARTIFACT_SPLITS.get(a["kind"], ()) if s in evals), None)
        model = export.load_model(run_dir, a, trust=True, cfg=cfg)  # (hashed above; its path checks stay)
        base = {
            **a,
            "x_fp32": a["bytes"] / fp32_bytes if fp32_bytes else None,
            "test_auc_mean": ev["auc_mean"] if ev else None,
        }
        row = {
            **base,
            "runtime": RUNTIMES.get(a["kind"], "eager"),
            "cpu": measure(model, image_size, torch.device("cpu")),
        }
        cpu_only = a["kind"] in export.CPU_ONLY
        row["gpu"] = measure_gpu(model, image_size, gpu) if gpu is not None and not cpu_only else None
        if gpu is not None and cpu_only:
            skipped.append(f"{a['path']} on the GPU: {a['kind']} runs on x86 CPU kernels only")
        rows.append(row)
        if compile and a["kind"] in (export.FP32, export.INT8):
            model = copy.deepcopy(model)  # (the int8 model is rebuilt once: converting takes seconds)
            rows.append(
                {
                    **base,
                    "runtime": "compiled",
                    "gpu": None,
                    "cpu": measure(compiled(model, a["kind"] == export.INT8), image_size, torch.device("cpu")),
                }
            )
        if a["kind"] in RUNTIMES and onnx_export.has_openvino():
            model = onnx_export.OpenVINO(export.verified_path(run_dir, a, trust=True))  # (hashed above)
            # (no test AUROC: the run evaluated the file in onnxruntime, and OpenVINO's int8 kernels round
            # differently - 0.4 in the logits of a random input, measured)
            rows.append(
                {
                    **base,
                    "runtime": "openvino",
                    "test_auc_mean": None,
                    "gpu": None,
                    "cpu": measure(model, image_size, torch.device("cpu")),
                }
            )
    best_fp32 = max(
        (r["cpu"]["throughput_b32"] for r in rows if r["kind"] in (export.FP32, export.ONNX_FP32)), default=None
    )
    for r in rows:
        r["x_fp32_speed"] = r["cpu"]["throughput_b32"] / best_fp32 if best_fp32 else None
    return {
        "run": run_dir.name,
        "image_size": image_size,
        "cpu": cpu_name(),
        "cpu_int8_isa": int8_isa(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(gpu) if gpu is not None else None,
        "artifacts": rows,
        "skipped": skipped,
    }
