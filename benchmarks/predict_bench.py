"""`chexui predict` throughput: decode + preprocess + model, end to end, on N image files.

    python benchmarks/predict_bench.py RUN_DIR IMAGES_DIR [--artifacts fp32,int8,onnx_int8] [--n 1000]

Prints the CPU model and its int8 instruction sets, then images/s per artifact (the run's image size).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.data import images  # noqa: E402
from engine.inference.predict import predict  # noqa: E402
from engine.runtime.cpuinfo import cpu_name, int8_isa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("images_dir")
    ap.add_argument("--artifacts", default="fp32,int8,onnx_int8")
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    files = images.find([args.images_dir])[: args.n]
    with tempfile.TemporaryDirectory() as tmp:  # exactly N files, as links
        for i, f in enumerate(files):
            (Path(tmp) / f"{i:05d}{f.suffix}").symlink_to(f.resolve())
        print(f"CPU {cpu_name()} (int8: {int8_isa()}); {len(files)} images from {args.images_dir}")
        for art in args.artifacts.split(","):
            t0 = time.perf_counter()
            res = predict(Path(args.run_dir), [tmp], art)
            dt = time.perf_counter() - t0
            print(
                f"{art:10s} {res['image_size']} px: {len(res['rows'])} images in {dt:.1f}s = "
                f"{len(res['rows']) / dt:.1f} images/s ({res['model']})"
            )


if __name__ == "__main__":
    main()
