"""TUI benchmark: time from starting the process (parent's clock) to the first frame, and CPU used while
following a run that emits 10 events per second. Run by hand:  python benchmarks/tui_bench.py [--seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RECORDING = ROOT / "tests" / "data" / "events" / "two_rank.jsonl"

FIRST_FRAME = textwrap.dedent("""
    import sys, time
    t0 = float(sys.argv[1])  # the parent's clock just before it started this process
    import chexui.cli  # what the `chexui` console script loads first
    from chexui.tui.app import make_app
    app = make_app(sys.argv[2], run=sys.argv[3] if len(sys.argv) > 3 else None)
    async def auto(pilot):
        await pilot.pause(0)  # the first frame has been composed and rendered
        print(f"{time.time() - t0:.3f}")
        app.exit()
    app.run(headless=True, size=(100, 30), auto_pilot=auto)
""")

FOLLOW = textwrap.dedent("""
    import sys
    from chexui.tui.app import make_app
    make_app(sys.argv[1], run=sys.argv[2]).run(headless=True, size=(100, 30))
""")


def first_frame(runs: Path, run: Path | None) -> float:
    args = [sys.executable, "-c", FIRST_FRAME, repr(time.time()), str(runs)] + ([str(run)] if run else [])
    args[3] = repr(time.time())
    out = subprocess.run(args, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=10.0, help="events per second")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="chexui-tui-bench-"))
    runs = work / "runs"
    run = runs / "20260101-000000-bench"
    (run / "logs").mkdir(parents=True)
    (run / "config.toml").write_text('name = "bench"\n')
    recorded = [json.loads(line) for line in RECORDING.read_text().splitlines()]

    launcher = [first_frame(runs, None) for _ in range(3)]
    print(
        f"first frame, launcher screen (`chexui`): {min(launcher):.2f} s "
        f"(best of 3; {', '.join(f'{t:.2f}' for t in launcher)})"
    )

    # a live run: this process plays the launcher; events stream in at --rate per second
    (run / "launcher.json").write_text(json.dumps({"pid": os.getpid(), "create_time": psutil.Process().create_time()}))
    with open(run / "events.jsonl", "w") as f:
        f.write(json.dumps(recorded[0]) + "\n")
    monitor = [first_frame(runs, run) for _ in range(3)]
    print(f"first frame, monitor of a live run (`chexui watch RUN`): {min(monitor):.2f} s (best of 3)")

    app = subprocess.Popen(
        [sys.executable, "-c", FOLLOW, str(runs), str(run)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = psutil.Process(app.pid)
    time.sleep(3.0)  # start-up is not part of the steady state
    c0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    # like a real run: progress events, and an epoch boundary (epoch_ended + epoch_started) every 30 s
    progress = next(e for e in recorded if e["type"] == "progress")
    ended = next(e for e in recorded if e["type"] == "epoch_ended")
    n, epoch = 0, 1
    with open(run / "events.jsonl", "a") as f:
        while time.monotonic() - t0 < args.seconds:
            if n % 300 == 299:
                e = dict(ended, epoch=epoch, ts=time.time())
                epoch += 1
            elif n % 300 == 0:
                e = {"v": 1, "type": "epoch_started", "ts": time.time(), "epoch": epoch}
            else:
                e = dict(progress, epoch=epoch, step=n % 300, steps=300, loss=0.1 + 0.01 * (n % 7), ts=time.time())
            f.write(json.dumps(e) + "\n")
            f.flush()
            n += 1
            time.sleep(max(0.0, t0 + n / args.rate - time.monotonic()))
    c1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
    app.terminate()
    app.wait(10)
    print(
        f"following {n} events at {n / (t1 - t0):.1f}/s for {t1 - t0:.0f} s: "
        f"{100 * (c1 - c0) / (t1 - t0):.1f}% of one core"
    )


if __name__ == "__main__":
    main()
