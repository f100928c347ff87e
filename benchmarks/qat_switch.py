"""Cost of a QAT graph's train/eval switch (twice an epoch, and at every evaluation): chexui's
`quant.allow_train_eval` (rewrites whose ops the graph lacks skipped, the BatchNorm patterns exported once
per process) against torchao's own `allow_exported_model_train_eval`, on the same prepared graph, with a
check that both leave the same graph after every switch.

    python benchmarks/qat_switch.py                  # resnet18 and densenet121 at 32 px, 1 thread
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

import torch  # noqa: E402

from engine import config  # noqa: E402
from engine.compression import quant  # noqa: E402
from engine.models.chexnet import build_model  # noqa: E402
from engine.runtime.cpuinfo import cpu_name, int8_isa  # noqa: E402


def per_switch(model, switches: int) -> float:
    t = time.perf_counter()
    for k in range(switches):
        model.eval() if k % 2 == 0 else model.train()
    return (time.perf_counter() - t) / switches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "densenet121"])
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--switches", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)  # (as the suite's runs: a switch is graph rewriting, not arithmetic)
    print(f"CPU: {cpu_name()} (int8: {int8_isa()}), {torch.get_num_threads()} thread, torch {torch.__version__}")
    from torchao.quantization.pt2e import allow_exported_model_train_eval

    for arch in args.archs:
        ours = quant.prepare(build_model(arch, "none"), config.defaults()["quantize"], args.image_size, arch)
        theirs = copy.deepcopy(ours)
        allow_exported_model_train_eval(theirs)  # (torchao's own train/eval in place of chexui's)
        first = per_switch(ours, 1)  # the first eval exports the BatchNorm patterns this process reuses
        ours.train()
        t_ours, t_theirs = per_switch(ours, args.switches), per_switch(theirs, args.switches)
        same = quant.graph_structure(ours) == quant.graph_structure(theirs)
        print(
            f"{arch}: a switch {t_ours:.3f} s (the process's first {first:.3f} s), torchao's own {t_theirs:.3f} s: "
            f"{t_theirs / t_ours:.1f}x; the same graph after {args.switches} switches: {same}"
        )


if __name__ == "__main__":
    main()
