"""Cost of one magnitude-pruning mask update (`Pruner.step` when a mask is due): every conv layer of a
network at 10, 50 and 70 % sparsity, by chexui's `magnitude_mask` (one topk of the kept weights) and by
torch.nn.utils.prune.L1Unstructured (a topk of the pruned ones), with the number of layers whose masks
differ (only where weights tie at the threshold: both prune exactly round(s * n)).

    python benchmarks/prune_masks.py                 # resnet18 and densenet121, all cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

import torch  # noqa: E402
from torch.nn.utils import prune as tprune  # noqa: E402

from engine.compression.prune import magnitude_mask  # noqa: E402
from engine.models.chexnet import build_model, conv_layers  # noqa: E402
from engine.runtime.cpuinfo import cpu_name, int8_isa  # noqa: E402


def ours(weights: list[torch.Tensor], s: float) -> list[torch.Tensor]:
    return [magnitude_mask(w, s) for w in weights]


def library(weights: list[torch.Tensor], s: float) -> list[torch.Tensor]:
    return [
        tprune.L1Unstructured(amount=round(s * w.numel())).compute_mask(w, torch.ones_like(w)).bool() for w in weights
    ]


def best_of(fn, weights: list[torch.Tensor], s: float, reps: int) -> tuple[float, list[torch.Tensor]]:
    times, out = [], []
    for _ in range(reps):
        t = time.perf_counter()
        out = fn(weights, s)
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "densenet121"])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    print(f"CPU: {cpu_name()} (int8: {int8_isa()}), {torch.get_num_threads()} threads, torch {torch.__version__}")
    torch.manual_seed(0)
    for arch in args.archs:
        weights = [m.weight.detach() for m in conv_layers(build_model(arch, "none"), arch).values()]
        n = sum(w.numel() for w in weights)
        for s in (0.1, 0.5, 0.7):
            t_ours, a = best_of(ours, weights, s, args.reps)
            t_lib, b = best_of(library, weights, s, args.reps)
            differ = sum(not torch.equal(x, y) for x, y in zip(a, b))
            pruned = sum(int((~x).sum()) for x in a)
            print(
                f"{arch:12s} {len(weights):3d} convs {n / 1e6:5.1f} M weights  sparsity {s:.1f}: "
                f"magnitude_mask {t_ours:6.3f} s  L1Unstructured {t_lib:6.3f} s  ({t_lib / t_ours:4.1f}x)  "
                f"pruned {pruned / n:.4f}  layers whose masks differ (ties) {differ}"
            )


if __name__ == "__main__":
    main()
