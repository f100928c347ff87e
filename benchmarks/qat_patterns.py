"""Cost of the pattern graphs a QAT prepare and an int8 convert make (torchao matches conv-BN patterns to
fuse them at prepare and to fold them at convert, tracing each pattern function to an aten graph):
chexui's non-strict trace (`quant._pattern_graph`) against torchao's own strict `torch.export`, on the
same model, with a check that both give the same int8 graph and the same outputs.

    python benchmarks/qat_patterns.py                # resnet18 and densenet121 at 32 px, 1 thread
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

import torch  # noqa: E402

from engine import config  # noqa: E402
from engine.compression import quant  # noqa: E402
from engine.models.chexnet import build_model  # noqa: E402
from engine.runtime.cpuinfo import cpu_name, int8_isa  # noqa: E402


def prepare_and_convert(arch: str, image_size: int, trace) -> dict:
    """A QAT prepare, a few steps, .eval() and an int8 convert of a seeded model, with `trace` making
    every pattern graph: the seconds of each, how many patterns were traced and in how long, the int8
    model."""
    traced: list[float] = []

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return trace(*args, **kwargs)
        finally:
            traced.append(time.perf_counter() - t)

    quant._pattern_graph, quant._PATTERN_GRAPHS = timed, {}  # (the BatchNorm patterns made anew)
    torch.manual_seed(0)
    model = build_model(arch, "none")
    t = time.perf_counter()
    qat = quant.prepare(model, config.defaults()["quantize"], image_size, arch)
    t_prepare = time.perf_counter() - t
    opt = torch.optim.Adam(qat.parameters(), 1e-3)
    for _ in range(3):  # (observers and BatchNorm statistics away from their initial values)
        loss = qat(torch.randn(8, 3, image_size, image_size)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    qat.eval()
    t = time.perf_counter()
    int8 = quant.convert(qat)
    t_convert = time.perf_counter() - t
    return {"prepare": t_prepare, "convert": t_convert, "n": len(traced), "traced": sum(traced), "int8": int8}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", nargs="+", default=["resnet18", "densenet121"])
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)  # (as the suite's runs: tracing is Python, not arithmetic)
    print(f"CPU: {cpu_name()} (int8: {int8_isa()}), {torch.get_num_threads()} thread, torch {torch.__version__}")
    from torchao.quantization.pt2e.utils import _get_aten_graph_module_for_pattern as torchaos

    ours = quant._pattern_graph
    prepare_and_convert("resnet18", 16, torchaos)  # (TorchDynamo's and the tracers' first-use costs, paid once)
    x = torch.randn(4, 3, args.image_size, args.image_size)
    for arch in args.archs:
        a = prepare_and_convert(arch, args.image_size, torchaos)
        b = prepare_and_convert(arch, args.image_size, ours)
        same = quant.graph_structure(a["int8"]) == quant.graph_structure(b["int8"])
        with torch.no_grad():
            equal = torch.equal(a["int8"](x), b["int8"](x))
        print(
            f"{arch}: {b['n']} pattern graphs in {b['traced']:.2f} s (torchao's strict export: {a['traced']:.2f} s, "
            f"{a['traced'] / b['traced']:.1f}x); prepare {b['prepare']:.2f} s ({a['prepare']:.2f}), convert "
            f"{b['convert']:.2f} s ({a['convert']:.2f}); the same int8 graph: {same}, the same outputs: {equal}"
        )
    quant._pattern_graph = ours


if __name__ == "__main__":
    main()
