"""Data-layer benchmark: prints the figures quoted in the Data issue. Run by hand:

    python benchmarks/data_bench.py [--images 500] [--workdir /tmp/chexui-bench]

- `chexui data demo` speed (2000 images at 128 px) and PNG weight at 1024 px
- `prepare`: images/s per core decoding 1024 px PNGs into the 224 px cache (target >= 150 per core)
- cached training loader at 224 px with flip + normalisation (target >= 2,000 images/s on this CPU)
- indexing + patient-splitting the full 112,120-row NIH table (target <= 5 s), when $CHEXUI_NIH_CSV is set
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--workdir", default="/tmp/chexui-bench")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    work = Path(args.workdir)
    os.environ.setdefault("CHEXUI_CACHE_DIR", str(work / "cache"))
    from engine.data import cache, demo, nih

    t = time.perf_counter()
    demo.generate(work / "demo-2000x128", 2000, 128, seed=0)
    print(f"demo generate 2000 x 128 px: {time.perf_counter() - t:.1f} s ({os.cpu_count()} cores)")

    big = work / f"demo-{args.images}x1024"
    if not (big / "Data_Entry_2017.csv").is_file():
        t = time.perf_counter()
        demo.generate(big, args.images, 1024, seed=0)
        print(f"demo generate {args.images} x 1024 px: {time.perf_counter() - t:.1f} s")
    sizes = [p.stat().st_size for p in (big / "images").iterdir()]
    print(
        f"1024 px PNG size: mean {np.mean(sizes) / 1e3:.0f} KB, min {min(sizes) / 1e3:.0f} KB, "
        f"max {max(sizes) / 1e3:.0f} KB"
    )

    index = nih.index_dataset(big)
    for workers in (1, os.cpu_count() or 1):
        t = time.perf_counter()
        cache.prepare(index, 224, workers=workers, force=True)
        dt = time.perf_counter() - t
        print(
            f"prepare 1024 -> 224 px, {workers} worker(s): {len(index) / dt:.0f} images/s "
            f"= {len(index) / dt / workers:.0f} images/s per core"
        )

    import torch

    from engine.data.batches import Images, flip_mask, loader, to_input, train_batches

    mem = cache.open_cache(index, 224)
    images = Images(index, 224, mem)
    rows = np.arange(len(index))
    n = 0
    t = time.perf_counter()
    for epoch in range(1, 6):
        batches = train_batches(len(rows), args.batch, 1, 0, 0, epoch)
        with loader(images, batches, rows, 0, torch.device("cpu"), pin=False) as dl:
            for step, (x, _y, _) in enumerate(dl):
                x = to_input(x, torch.device("cpu"), flip_mask(len(x), 0.5, 0, epoch, step, 0))
                n += len(x)
    dt = time.perf_counter() - t
    print(
        f"cached loader 224 px, batch {args.batch}, flip + normalise (torch threads {torch.get_num_threads()}): "
        f"{n / dt:.0f} images/s"
    )

    csv = os.environ.get("CHEXUI_NIH_CSV")
    if csv:
        t = time.perf_counter()
        full = nih.index_dataset(Path(csv).parent, check_files=False, csv=csv)
        split = nih.split_by_patient(full.patients, 0.1, 0.2, 0)
        m = nih.split_manifest(full, split)
        print(
            f"full NIH table: {len(full)} rows indexed + split + manifest in {time.perf_counter() - t:.2f} s, "
            f"leakage {m['leakage_patients']}"
        )


if __name__ == "__main__":
    main()
