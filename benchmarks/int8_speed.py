"""CPU inference speed of fp32 vs PT2E int8 at the study's 224 px, without training a run first.

    python benchmarks/int8_speed.py --arch resnet50 densenet121        # 224 px, batch 1 and 32

For each model (random weights: speed does not depend on their values): eager fp32, compiled fp32
(torch.compile + freezing: the optimised baseline), and the PT2E int8 graph (post-training quantization
of all layers but the classifier, as `quantize.scope = "all"`) eager and compiled, each at batch 1
(median latency) and batch 32 (throughput), timed by the same code as `chexui bench`. Prints the CPU
model and its int8 instruction sets: int8 speed depends on them.

Its int8 rows are int8 kernels only because `quant.post_training` imports torchao's x86 quantizer,
which registers the Inductor passes; `chexui bench` imports it for its compiled int8 row (a program
compiled without them runs fp32 convolutions: 0.86x instead of 3.28x on a QAT ResNet50 at 224 px).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

import torch  # noqa: E402

from engine.compression import quant  # noqa: E402
from engine.inference.bench import compiled, measure  # noqa: E402
from engine.models.chexnet import build_model  # noqa: E402
from engine.runtime.cpuinfo import cpu_name, int8_isa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["resnet50", "densenet121"])
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    cpu = torch.device("cpu")
    print(
        f"CPU: {cpu_name()} (int8: {int8_isa()}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"{args.size} px"
    )
    print(f"{'model':<12} {'runtime':<16} {'b1 ms':>8} {'b32 img/s':>10} {'x compiled fp32':>16} {'setup s':>8}")
    for arch in args.arch:
        torch.manual_seed(0)
        model = build_model(arch, "none").eval()
        rows = []
        t = time.perf_counter()
        rows.append(("fp32 eager", measure(model, args.size, cpu), time.perf_counter() - t))
        t = time.perf_counter()
        rows.append(("fp32 compiled", measure(compiled(model, False), args.size, cpu), time.perf_counter() - t))
        t = time.perf_counter()
        int8 = quant.post_training(model, "all", args.size, [torch.randn(4, 3, args.size, args.size) for _ in range(2)])
        prog = quant.Program(int8)
        rows.append(("int8 eager", measure(prog, args.size, cpu), time.perf_counter() - t))
        t = time.perf_counter()
        rows.append(("int8 compiled", measure(compiled(prog, True), args.size, cpu), time.perf_counter() - t))
        base = rows[1][1]["throughput_b32"]
        for name, m, setup in rows:
            print(
                f"{arch:<12} {name:<16} {m['latency_b1_ms']:>8.1f} {m['throughput_b32']:>10.1f} "
                f"{m['throughput_b32'] / base:>16.2f} {setup:>8.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
