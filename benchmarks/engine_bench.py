"""Training-throughput benchmark: the engine end to end vs a bare forward/backward loop.

    python benchmarks/engine_bench.py --arch densenet121 --size 64 --batch 32            # CPU figure
    python benchmarks/engine_bench.py --arch resnet50 --size 224 --batch 128 --images 4000  # GPU: bf16, channels_last

The engine figure is the real `Run` (cache loader, on-device augmentation, weighted BCE, Adam, event
stream) timed over its second epoch; the bare loop feeds pre-made tensors already on the device to the
same model with the same optimizer, batch, input size, precision and threads. Prints both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from a checkout

import torch  # noqa: E402

from engine import config  # noqa: E402
from engine.data import demo
from engine.runtime import dist
from engine.training.trainer import Run, amp_dtype, autocast_for, compile_mode, make_optimizer  # noqa: E402


def bare_loop(cfg: dict, device: torch.device, steps: int, warmup: int = 3) -> float:
    """Images/s of the same model, optimizer (fused Adam), precision and compile mode on one pre-made
    batch already on the device: no data, no events, no pruning."""
    from engine.models.chexnet import build_model

    t = cfg["train"]
    channels_last = t["channels_last"]  # as the engine: on every device
    model = build_model(cfg["model"]["arch"], "none").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), t, t["lr"], device)
    mode = compile_mode(t["compile"])
    net = torch.compile(model, mode=mode) if mode is not None else model
    s, b = cfg["data"]["image_size"], t["batch_size"]
    x = torch.randn(b, 3, s, s, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(b, 14, device=device) < 0.1).float()
    model.train()
    warmup += 2 if mode is not None else 0  # compilation, and CUDA graph recording
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with autocast_for(cfg, device):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * b / (time.perf_counter() - t0)


def engine_epochs(cfg: dict, run_dir: Path) -> tuple[float, int]:
    """Images/s of the engine's second training epoch, and its number of steps."""
    d = dist.setup(cfg["distributed"]["backend"])
    run = Run(cfg, run_dir, d)
    run.setup()
    run.loop.train_one_epoch(1)  # warm-up: allocator, cudnn autotuning, page cache
    run.state.step = 0  # (Loop.fit() does this between epochs)
    run.loop.train_one_epoch(2)
    return run.loop.epoch_images_per_s, run.steps_per_epoch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="densenet121")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--images", type=int, default=600, help="demo images to generate (about 70% train)")
    ap.add_argument("--data", default="", help="an NIH-layout dataset instead of a generated demo set")
    ap.add_argument("--compile", default="false", help="train.compile for both: false, true or a mode")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="chexui-bench-"))
    root = args.data
    if not root:
        root = str(work / f"demo-{args.images}x{max(args.size, 64)}")
        if not (Path(root) / "Data_Entry_2017.csv").is_file():
            demo.generate(root, args.images, max(args.size, 64), seed=0)
    cfg = config.validate(
        {
            "data": {"root": root, "image_size": args.size, "workers": 4, "hflip": 0.5},
            "model": {"arch": args.arch, "pretrained": "none"},
            "train": {
                "batch_size": args.batch,
                "epochs": 2,
                "compile": {"false": False, "true": True}.get(args.compile, args.compile),
            },
        },
        "bench",
    )
    run_dir = work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    engine_ips, steps = engine_epochs(cfg, run_dir)
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    bare_ips = bare_loop(cfg, device, steps)
    res = {
        "arch": args.arch,
        "image_size": args.size,
        "batch": args.batch,
        "steps": steps,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "amp": str(amp_dtype(cfg, device)).removeprefix("torch."),
        "channels_last": cfg["train"]["channels_last"],
        "compile": cfg["train"]["compile"],
        "engine_images_per_s": round(engine_ips, 1),
        "bare_images_per_s": round(bare_ips, 1),
        "ratio": round(engine_ips / bare_ips, 3),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{res['arch']} {res['image_size']} px batch {res['batch']} on {res['device']} ({res['amp']}, "
            f"channels_last={res['channels_last']}, compile={res['compile']}, {steps} steps): "
            f"engine {engine_ips:.1f} images/s, "
            f"bare loop {bare_ips:.1f} images/s, ratio {res['ratio']:.3f}"
        )


if __name__ == "__main__":
    main()
