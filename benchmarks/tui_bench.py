"""TUI benchmark, run by hand:  python benchmarks/tui_bench.py [--seconds 20] [--runs 500]

Prints, for the app in a real terminal (a pseudo-terminal of --size, drained by this process):
- the time from starting the process (this process's clock) to the first frame of each screen (its
  first refresh once it is the screen shown, seen by a 20 ms poll), and for the runs browser over --runs
  runs the time until its table lists them all;
- the CPU each screen uses while idle (launcher, the monitor of a finished run, the runs browser over
  --runs runs, compare of two runs), in % of one core;
- following a live run that writes 10 events per second: CPU, frames drawn per second, and the frame
  time (Textual's compositor rendering the screen's changes and writing them to the terminal; layout
  passes timed apart).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "tests" / "data" / "events"

# The app in the child process; Screen's two drawing steps are timed there (private Textual methods:
# this benchmark only reads their durations, the app does not depend on them).
CHILD = textwrap.dedent("""
    import json, sys, time
    t_start = float(sys.argv[1])  # the parent's clock just before it started this process
    scene, runs, run, seconds, stats_file = sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6]
    import chexui.cli  # what the `chexui` console script loads first
    from textual.screen import Screen
    from textual.widgets import DataTable
    from chexui.tui.app import make_app

    timings = {"frame": [], "layout": []}
    def timed(name, method):
        def wrapper(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                timings[name].append((time.monotonic(), time.perf_counter() - t))
        return wrapper
    Screen._compositor_refresh = timed("frame", Screen._compositor_refresh)
    Screen._refresh_layout = timed("layout", Screen._refresh_layout)

    stats = {}
    app = make_app(runs, run=run or None, start="runs" if scene in ("runs", "compare") else "launcher")

    def listed():
        try:
            return app.screen.query_one("#runs", DataTable).row_count
        except Exception:
            return 0

    def poll():  # (every 20 ms until it has seen what it waits for; then it stops: not part of idle)
        if "first_frame_s" not in stats and type(app.screen) is not Screen and "shown" not in stats:
            stats["shown"] = True  # chexui's screen is up: the frame after its next refresh is its first
            app.screen.call_after_refresh(lambda: stats.setdefault("first_frame_s", time.time() - t_start))
        if scene in ("runs", "compare") and "listed_s" not in stats and listed() >= int(sys.argv[7]):
            stats["listed_s"] = time.time() - t_start
            if scene == "compare":
                app.screen.action_mark(); app.screen.query_one("#runs").action_cursor_down()
                app.screen.action_mark(); app.screen.action_compare()
        if "first_frame_s" in stats and ("listed_s" in stats or scene not in ("runs", "compare")):
            poller.stop()

    def finish():
        stats["timings"], stats["screen"] = timings, type(app.screen).__name__
        with open(stats_file, "w") as f:
            json.dump(stats, f)
        app.exit()

    def mounted():
        global poller
        poller = app.set_interval(0.02, poll)
        app.set_timer(seconds, finish)
    app.call_later(mounted)
    app.run()
""")


def pty_app(scene: str, runs: Path, run: Path | None, seconds: float, n_runs: int, size: tuple[int, int]):
    """Start the app on a pseudo-terminal of `size`; returns (process, stats file)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
    stats = Path(tempfile.mkstemp(suffix=".json")[1])
    env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor"}
    env.pop("NO_COLOR", None)
    args = [sys.executable, "-c", CHILD, repr(time.time()), scene, str(runs), str(run or ""), str(seconds), str(stats)]
    proc = subprocess.Popen(
        [*args, str(n_runs)], stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env=env, start_new_session=True
    )
    os.close(slave)

    def drain() -> None:  # the terminal's side: read everything the app writes
        while True:
            try:
                if not os.read(master, 1 << 16):
                    break
            except OSError:
                break
        os.close(master)

    threading.Thread(target=drain, daemon=True).start()
    return proc, stats


def idle_cpu(scene: str, runs: Path, run: Path | None, args, settle: float) -> tuple[float, dict]:
    """% of one core the app uses from `settle` s after its start for args.seconds, and its stats."""
    proc, stats_file = pty_app(scene, runs, run, settle + args.seconds + 1.0, args.runs, args.size)
    p = psutil.Process(proc.pid)
    time.sleep(settle)
    c0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
    time.sleep(args.seconds)
    c1, t1 = sum(p.cpu_times()[:2]), time.monotonic()
    proc.wait(60)
    stats = json.loads(stats_file.read_text())
    stats_file.unlink()
    return 100 * (c1 - c0) / (t1 - t0), stats


def recorded_run(runs: Path, name: str, recording: str) -> Path:
    run = runs / name
    (run / "logs").mkdir(parents=True)
    shutil.copyfile(RECORDED / f"{recording}.jsonl", run / "events.jsonl")
    (run / "config.toml").write_text('name = "bench"\n')
    return run


def ms(values: list[float]) -> str:
    if not values:
        return "none"
    v = sorted(values)
    return (
        f"mean {1e3 * sum(v) / len(v):.1f} ms, p95 {1e3 * v[int(0.95 * (len(v) - 1))]:.1f} ms, max {1e3 * v[-1]:.1f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each idle and following measurement")
    ap.add_argument("--runs", type=int, default=500, help="runs in the runs browser's dir")
    ap.add_argument("--rate", type=float, default=10.0, help="events per second while following")
    ap.add_argument("--size", type=lambda s: tuple(int(x) for x in s.split("x")), default=(160, 48))
    args = ap.parse_args()
    from engine.runtime.cpuinfo import cpu_name, int8_isa

    py, (w, h) = platform.python_version(), args.size
    print(f"{cpu_name()} (int8: {int8_isa()}), {psutil.cpu_count()} cores; Python {py}; terminal {w}x{h}")

    work = Path(tempfile.mkdtemp(prefix="chexui-tui-bench-"))
    empty = work / "empty-runs"
    empty.mkdir()
    many = work / "many-runs"
    recordings = ("full", "prune", "two_rank", "failed")
    for i in range(args.runs):
        recorded_run(many, f"20260101-{i:06d}-bench", recordings[i % len(recordings)])
    finished = recorded_run(work / "one", "20260101-000000-full", "full")

    # ---------------------------------------------------------------- idle
    print("\nidle (after the screen settled), % of one core:")
    for label, scene, runs, run, settle in (
        ("launcher (`chexui`)", "launcher", empty, None, 3.0),
        ("monitor of a finished run", "monitor", finished.parent, finished, 3.0),
        (f"runs browser, {args.runs} runs", "runs", many, None, 8.0),
        ("compare of two runs", "compare", many, None, 10.0),
    ):
        pct, stats = idle_cpu(scene, runs, run, args, settle)
        listed = f"; all {args.runs} listed after {stats['listed_s']:.2f} s" if "listed_s" in stats else ""
        print(
            f"  {label} [{stats['screen']}]: {pct:.2f}% (first frame {stats.get('first_frame_s', float('nan')):.2f} s "
            f"after start{listed})"
        )

    # ---------------------------------------------------------------- following a live run
    live = work / "live" / "20260101-000000-bench"
    (live / "logs").mkdir(parents=True)
    (live / "config.toml").write_text('name = "bench"\n')
    recorded = [json.loads(line) for line in (RECORDED / "two_rank.jsonl").read_text().splitlines()]
    # this process plays the run's launcher (alive, so the monitor follows it as live)
    (live / "launcher.json").write_text(json.dumps({"pid": os.getpid(), "create_time": psutil.Process().create_time()}))
    with open(live / "events.jsonl", "w") as f:
        f.write(json.dumps(recorded[0]) + "\n")
    settle = 3.0
    proc, stats_file = pty_app("monitor", live.parent, live, settle + args.seconds + 1.0, 0, args.size)
    p = psutil.Process(proc.pid)
    time.sleep(settle)
    c0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
    progress = next(e for e in recorded if e["type"] == "progress")
    ended = next(e for e in recorded if e["type"] == "epoch_ended")
    n, epoch = 0, 1
    with open(live / "events.jsonl", "a") as f:  # progress events and an epoch boundary every 30 s
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
    c1, t1 = sum(p.cpu_times()[:2]), time.monotonic()
    proc.wait(60)
    stats = json.loads(stats_file.read_text())
    frames = [d for t, d in stats["timings"]["frame"] if t >= t0]
    layouts = [d for t, d in stats["timings"]["layout"] if t >= t0]
    print(
        f"\nfollowing a live run at {n / (t1 - t0):.1f} events/s for {t1 - t0:.0f} s (first frame "
        f"{stats['first_frame_s']:.2f} s after start): {100 * (c1 - c0) / (t1 - t0):.1f}% of one core\n"
        f"  frames: {len(frames)} ({len(frames) / (t1 - t0):.1f}/s), frame time {ms(frames)}\n"
        f"  layout passes: {len(layouts)}, {ms(layouts)}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
