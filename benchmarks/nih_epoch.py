"""One NIH-size epoch of the real engine, timed per phase: train, validation with AUROC, checkpoint.

    python benchmarks/nih_epoch.py                      # on a GPU: 112,120 phantoms at 224 px, DenseNet121
                                                        # and ResNet50, eager and compiled, bf16
    python benchmarks/nih_epoch.py --images 1200 --size 64 --arch resnet18 --batch 32 --modes false,true
                                                        # a CPU smoke run of the same path

Data: the demo generator's patients, labels and drawing code (engine/data/demo.py), drawn in parallel
processes straight into the engine's memory-mapped image cache (no PNG round trip). The dataset dir
holds the label table and an empty placeholder file per image, which the cache's fingerprint covers, so
the engine opens the cache as it opens a real one. The split is the study's: 70 / 10 / 20 % by patient.

Per architecture, compile mode and variant (dense; --prune: 70 % pruning with masks recomputed every 100
steps during the epoch; --qat: quantization-aware training): a Run is set up as `engine/train.py` does;
a warm-up of the epoch's last steps and of one validation batch (cudnn autotuning, and torch.compile,
whose time is printed apart); then one full epoch as `Run.fit` does it: every training step, the whole
validation split with per-class AUROC, a checkpoint. On a GPU, the calls per training step that make
the host wait for the GPU (torch's sync debug mode; 0 is the goal). Also the same model on one pre-made batch
(benchmarks/engine_bench.py's bare loop): the engine's ratio to it. Prints images/s per phase, peak GPU
memory, and the epoch's wall time beside the study's (one V100S: 0.74 h DenseNet121, 0.83 h ResNet50).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from engine_bench import bare_loop  # noqa: E402

from engine import config
from engine.data import cache, demo, nih  # noqa: E402
from engine.runtime import dist
from engine.runtime.cpuinfo import cpu_name, int8_isa  # noqa: E402
from engine.training.loop import compile_seconds  # noqa: E402
from engine.training.trainer import Run, amp_dtype  # noqa: E402

STUDY_EPOCH_H = {"densenet121": 0.74, "resnet50": 0.83}  # one V100S, the study's text
NIH_IMAGES = 112_120
SEED = 0
_ROWS: list[dict] | None = None  # the planned rows, per drawing process


def _draw_chunk(args: tuple[str, list[tuple[int, str]], int, int]) -> int:
    """cache.prepare's `fill`: draw the chunk's phantoms into the memory map."""
    global _ROWS
    data_path, items, n, size = args
    if _ROWS is None or len(_ROWS) != n:
        _ROWS = demo.plan(n, SEED)
    arr = np.memmap(data_path, dtype=np.uint8, mode="r+", shape=(n, size, size))
    for i, _ in items:
        arr[i] = demo.render_row(SEED, size, _ROWS[i], i)
    arr.flush()
    return len(items)


def phantom_dataset(work: Path, n: int, size: int, workers: int) -> Path:
    """An NIH-layout label table of `n` phantoms and their `size` px cache (reused when current)."""
    global _ROWS
    root = work / f"phantoms-{n}"
    (root / "images").mkdir(parents=True, exist_ok=True)
    if not (root / "Data_Entry_2017.csv").is_file():
        _ROWS = demo.plan(n, SEED)
        for r in _ROWS:  # empty placeholders: names for the index, stat()ed by the cache fingerprint
            (root / "images" / r["name"]).touch()
        demo.write_csv(root, _ROWS, size)
    index = nih.index_dataset(root)
    if cache.open_cache(index, size) is None:
        t0 = time.perf_counter()
        cache.prepare(index, size, workers=workers, force=True, fill=_draw_chunk)
        print(
            f"# drew {n:,} phantoms at {size} px into the cache in {time.perf_counter() - t0:.0f}s "
            f"({workers} processes)",
            flush=True,
        )
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def one_epoch(cfg: dict, run_dir: Path, d: dist.Dist, warm_steps: int) -> dict:
    """Warm-up, then one timed epoch of a fresh Run: seconds and images/s per phase."""
    run = Run(cfg, run_dir, d)
    run.setup()
    dev = d.device
    # warm-up: the last steps of epoch 1 (train_one_epoch starts at state.step, as a resumed run does)
    # and one validation batch: autotuning and compilation happen here
    t0, c0 = time.perf_counter(), compile_seconds()
    run.state.step = max(0, run.steps_per_epoch - warm_steps)
    run.loop.train_one_epoch(1)
    run.evaluator.predict(run.data.split["val"][: cfg["train"]["batch_size"] * 2])
    sync(dev)
    warm_s, compile_s = time.perf_counter() - t0, compile_seconds() - c0
    syncs = host_syncs_per_step(run)
    run.state.step = 0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    prune_s = timed_pruner(run, dev)
    c1 = compile_seconds()
    t0 = time.perf_counter()
    run.loop.train_one_epoch(2)  # (synchronises at its end on CUDA)
    t1 = time.perf_counter()
    val = run.evaluator.evaluate("val")  # the whole split, per-class AUROC
    t2 = time.perf_counter()
    run.state.epoch = 2
    run.save(best=True)  # last.pt and best.pt, atomically
    t3 = time.perf_counter()
    n_train, n_val = run.steps_per_epoch * cfg["train"]["batch_size"], val["n"]
    res = {
        "train_s": t1 - t0,
        "val_s": t2 - t1,
        "checkpoint_s": t3 - t2,
        "epoch_s": t3 - t0,
        "train_images_per_s": n_train / (t1 - t0),
        "val_images_per_s": n_val / (t2 - t1),
        "n_train": n_train,
        "n_val": n_val,
        "warmup_s": warm_s,
        "compile_s": compile_s,
        "recompile_s": compile_seconds() - c1,
        "val_auc_mean": val["auc_mean"],
        "peak_gpu_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
        "sparsity": run.method_fields("epoch_fields").get("sparsity"),
        "prune_s": prune_s[0] if run.method("prune") is not None else None,
        "host_syncs_per_step": syncs,
    }
    del run, val
    return res


def host_syncs_per_step(run: Run, short: int = 5, long: int = 25) -> float | None:
    """Calls that make the host wait for the GPU, per training step (CUDA only: torch's sync debug
    mode warns at each). Counted over the last `short` and the last `long` steps of an epoch: the
    difference over `long - short` steps leaves out the epoch's end (reading its summed loss)."""
    if run.d.device.type != "cuda" or run.steps_per_epoch < long:
        return None
    counts = []
    for n in (short, long):
        run.state.step = run.steps_per_epoch - n
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run.loop.train_one_epoch(1)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    return (counts[1] - counts[0]) / (long - short)


def timed_pruner(run: Run, dev: torch.device) -> list[float]:
    """Time the pruner's own work in the epoch (mask updates and the per-step multiply): its share of
    the epoch, apart from the run-to-run noise of two whole epochs. On CUDA each call is bracketed by
    synchronisations, so the figure is GPU time (and the epoch a little slower than unmeasured)."""
    total = [0.0]
    pruning = run.method("prune")
    if pruning is None:
        return total
    pruner = pruning.pruner  # (engine/compression/pruning.py)
    step = pruner.step

    def timed(s: int) -> None:
        sync(dev)
        t = time.perf_counter()
        step(s)
        sync(dev)
        total[0] += time.perf_counter() - t

    pruner.step = timed
    return total


def release() -> None:
    """Drop the compiled graphs and cached blocks of the previous measurement."""
    torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=NIH_IMAGES)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--arch", default="densenet121,resnet50", help="comma-separated")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument(
        "--modes",
        default="false,max-autotune-no-cudagraphs",
        help="train.compile values, comma-separated: false, true or a torch.compile mode",
    )
    ap.add_argument(
        "--prune",
        action="store_true",
        help="also the first mode with 70 %% pruning (masks recomputed every --prune-every steps of the epoch)",
    )
    ap.add_argument("--prune-every", type=int, default=100, help="prune.frequency_steps of the --prune variant")
    ap.add_argument("--qat", action="store_true", help="also the first mode with QAT (conv layers)")
    ap.add_argument("--warm-steps", type=int, default=30)
    ap.add_argument("--bare-steps", type=int, default=50, help="steps of the bare loop (0: none)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="drawing processes")
    ap.add_argument("--work", default=None, help="where the phantoms, cache and runs go")
    ap.add_argument("--json", default=None, help="also write the rows here (JSON lines)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="chexui-nih-epoch-"))
    os.environ.setdefault("CHEXUI_CACHE_DIR", str(work / "cache"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("cpu")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}; "
        f"{torch.cuda.get_device_name() if cuda else 'no GPU'}; CPU {cpu_name()} (int8: {int8_isa()}), "
        f"{os.cpu_count()} cores, {torch.get_num_threads()} threads",
        flush=True,
    )
    root = phantom_dataset(work, args.images, args.size, args.workers)
    d = dist.setup("auto")
    modes = [{"false": False, "true": True}.get(m, m) for m in args.modes.split(",")]
    plan = [(a, m, "dense") for a in args.arch.split(",") for m in modes]
    plan += [
        (a, modes[0], v) for a in args.arch.split(",") for v, on in (("prune", args.prune), ("qat", args.qat)) if on
    ]
    rows = []
    for arch, mode, variant in plan:
        cfg = config.validate(
            {
                "data": {"root": str(root), "image_size": args.size, "hflip": 0.5, "workers": 4},
                "model": {"arch": arch, "pretrained": "none"},
                "train": {"batch_size": args.batch, "epochs": 3, "compile": mode},
                "prune": {
                    "enabled": variant == "prune",
                    "final_sparsity": 0.7,
                    "begin_epoch": 0.0,
                    "end_epoch": 3.0,
                    "frequency_steps": args.prune_every,
                },
                "quantize": {"enabled": variant == "qat"},
                "eval": {"bootstrap_resamples": 0},
            },
            "nih_epoch",
        )
        run_dir = work / "runs" / f"{arch}-{mode}-{variant}"
        run_dir.mkdir(parents=True, exist_ok=True)
        row = {
            "arch": arch,
            "compile": mode,
            "variant": variant,
            "batch": args.batch,
            "size": args.size,
            "images": args.images,
            "amp": str(amp_dtype(cfg, device)).removeprefix("torch."),
            "device": str(device),
        }
        try:
            row |= one_epoch(cfg, run_dir, d, args.warm_steps)
            if args.bare_steps and variant == "dense":
                release()
                row["bare_images_per_s"] = bare_loop(cfg, device, args.bare_steps)
                row["ratio_to_bare"] = row["train_images_per_s"] / row["bare_images_per_s"]
        except Exception as e:  # one failing combination (a compile error) must not lose the others' figures
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            traceback.print_exc()
        release()
        rows.append(row)
        print(line(row), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    summary(rows)
    return 0 if rows and not any("error" in r for r in rows) else 1


def line(r: dict) -> str:
    head = f"{r['arch']:12} compile={str(r['compile']):27} {r['variant']:6}"
    if "error" in r:
        return f"{head} FAILED {r['error']}"
    study = STUDY_EPOCH_H.get(r["arch"]) if r["images"] == NIH_IMAGES and r["size"] == 224 else None
    vs = f" (study {study:.2f} h on a V100S: x{study * 3600 / r['epoch_s']:.0f})" if study else ""
    bare = (
        f"; bare loop {r['bare_images_per_s']:.0f} img/s, ratio {r['ratio_to_bare']:.3f}"
        if "bare_images_per_s" in r
        else ""
    )
    mem = f"; peak {r['peak_gpu_mb']:.0f} MiB" if r["peak_gpu_mb"] is not None else ""
    if r.get("host_syncs_per_step") is not None:
        mem += f"; host syncs per train step {r['host_syncs_per_step']:.2f}"
    sp = (
        (
            f"; sparsity {r['sparsity']:.3f}, pruning's own time {r['prune_s']:.2f}s "
            f"({100 * r['prune_s'] / r['epoch_s']:.1f} % of the epoch)"
        )
        if r["sparsity"] is not None
        else ""
    )
    return (
        f"{head} epoch {r['epoch_s']:.1f}s{vs}: train {r['n_train']:,} img {r['train_s']:.1f}s "
        f"({r['train_images_per_s']:.0f} img/s), val {r['n_val']:,} img + AUROC {r['val_s']:.1f}s "
        f"({r['val_images_per_s']:.0f} img/s), checkpoint {r['checkpoint_s']:.2f}s; warm-up {r['warmup_s']:.1f}s "
        f"of which compile {r['compile_s']:.1f}s (recompile in the epoch {r['recompile_s']:.1f}s){bare}{mem}{sp}; "
        f"val AUROC {r['val_auc_mean'] or float('nan'):.3f}"
    )


def summary(rows: list[dict]) -> None:
    """Compiled vs eager over a 100-epoch run, and pruning's overhead, per architecture."""
    ok = [r for r in rows if "error" not in r]
    for arch in dict.fromkeys(r["arch"] for r in ok):
        dense = {r["compile"]: r for r in ok if r["arch"] == arch and r["variant"] == "dense"}
        eager = dense.get(False)
        for mode, r in dense.items():
            if mode is False or eager is None:
                continue
            e100, c100 = 100 * eager["epoch_s"], 100 * r["epoch_s"] + r["compile_s"]
            print(
                f"# {arch}: compile={mode} over 100 epochs {c100 / 3600:.2f} h vs eager {e100 / 3600:.2f} h "
                f"({'compiled' if c100 < e100 else 'eager'} is faster; "
                f"train x{r['train_images_per_s'] / eager['train_images_per_s']:.2f})"
            )
        for v in ("prune", "qat"):
            r = next((x for x in ok if x["arch"] == arch and x["variant"] == v), None)
            base = dense.get(r["compile"]) if r else None
            if r and base:
                print(
                    f"# {arch}: {v} epoch {r['epoch_s']:.1f}s vs dense {base['epoch_s']:.1f}s "
                    f"({100 * (r['epoch_s'] / base['epoch_s'] - 1):+.1f} %); train {r['train_images_per_s']:.0f} img/s"
                )


if __name__ == "__main__":
    sys.exit(main())
