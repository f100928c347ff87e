"""Every built-in and study preset, shortened, through `chexui run --headless`, then `chexui bench` on
compressed runs; prints one table. Driven by benchmarks/gpu_acceptance.sh (settings in its header).

Each preset runs as a user would run it, with these overrides so that all of them fit in a few minutes:
2 epochs, the demo set (a handful of steps per epoch), no ImageNet download, no early stop, the pruning
schedule compressed into the first epoch (so epoch 2 is at the final sparsity) and one process.
A row passes when the run completed, a pruning preset's every layer is within 0.005 of its target, and
a QAT preset exported an int8 artifact.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from chexui import presets  # noqa: E402
from engine.events import read_events  # noqa: E402

SHORT = [
    "train.epochs=2",
    "train.early_stop_patience=0",
    "model.pretrained=none",
    "prune.begin_epoch=0.25",
    "prune.end_epoch=1.0",
    "prune.frequency_steps=1",
    "distributed.nproc=1",
]


def chexui(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "chexui.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


def run_preset(name: str, data: str, runs: Path, size: int, workers: int, timeout: float) -> dict:
    slug = name.replace("/", "-")
    sets = [*SHORT, f"data.image_size={size}", f"data.workers={workers}"]
    t0 = time.time()
    try:
        r = chexui(
            "run",
            "--headless",
            "--preset",
            name,
            "--data",
            data,
            "--runs-dir",
            str(runs / slug),
            "--name",
            slug,
            *[a for s in sets for a in ("--set", s)],
            timeout=timeout,
        )
        code, tail = r.returncode, (r.stdout + r.stderr).strip().splitlines()[-3:]
    except subprocess.TimeoutExpired:
        code, tail = "timeout", []
    dirs = sorted((runs / slug).glob("*")) if (runs / slug).is_dir() else []
    return {"preset": name, "exit": code, "wall_s": time.time() - t0, "dir": dirs[-1] if dirs else None, "tail": tail}


def summarize(row: dict) -> dict:
    run = row["dir"]
    ev = read_events(run / "events.jsonl") if run else []
    of = lambda t: [e for e in ev if e["type"] == t]  # noqa: E731
    started = (of("run_started") or [{}])[0]
    cfg = started.get("config", {})
    finished = (of("run_finished") or [{}])[-1]
    ends = of("epoch_ended")
    arts = (of("exported") or [{"artifacts": []}])[-1]["artifacts"]
    problems = []
    if finished.get("status") != "completed":
        problems.append(f"status {finished.get('status')} (exit {row['exit']}) {' | '.join(row['tail'])}")
    if cfg.get("prune", {}).get("enabled"):
        layers_file = run / "prune_layers.json"
        layers = json.loads(layers_file.read_text()) if layers_file.is_file() else {}
        last = layers.get(str(ends[-1]["epoch"])) if ends else None
        off = [n for n, i in (last or {}).items() if abs(i["sparsity"] - i["target"]) > 0.005]
        if not last or off:
            problems.append(f"sparsity off target in {len(off) if last else 'all'} layers")
    if cfg.get("quantize", {}).get("enabled") and not any(a["kind"] == "int8" for a in arts):
        problems.append("no int8 artifact")
    return {
        **row,
        "status": finished.get("status", "-"),
        "epochs": finished.get("epochs", 0),
        "sparsity": ends[-1]["sparsity"] if ends else None,
        "test_auc": finished.get("test_auc_mean"),
        "images_per_s": ends[-1]["images_per_s"] if ends else None,
        "memory_mb": max((max(e["memory_mb"]) for e in ends), default=None),
        "device": started.get("device", "-"),
        "amp": started.get("amp"),
        "artifacts": arts,
        "compressed": cfg.get("prune", {}).get("enabled") or cfg.get("quantize", {}).get("enabled"),
        "ok": not problems,
        "problems": problems,
    }


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--parallel", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--only", default="", help="comma-separated preset names (default: all)")
    ap.add_argument("--bench", default="", help="comma-separated presets to bench (default: every compressed one)")
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    names = [p.name for p in presets.available() if p.source == "builtin"]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    runs = Path(args.work) / "runs"
    t0 = time.time()
    with ThreadPoolExecutor(args.parallel) as pool:
        rows = list(pool.map(lambda n: run_preset(n, args.data, runs, args.size, args.workers, args.timeout), names))
    rows = [summarize(r) for r in rows]
    print(
        f"# {len(rows)} presets in {time.time() - t0:.0f}s, {args.parallel} at a time; device: "
        f"{rows[0]['device'] if rows else '-'}, amp {rows[0]['amp'] if rows else '-'}, {args.size} px"
    )
    print(
        f"{'preset':34} {'status':10} {'ep':>2} {'sparsity':>8} {'test AUC':>8} {'train img/s':>11} "
        f"{'peak MB':>8} {'wall s':>6}  artifacts (bytes)"
    )
    for r in rows:
        arts = ", ".join(f"{a['kind']} {a['bytes']:,}" for a in r["artifacts"]) or "-"
        print(
            f"{r['preset']:34} {r['status']:10} {r['epochs']:>2} {fmt(r['sparsity'], '.4f'):>8} "
            f"{fmt(r['test_auc'], '.4f'):>8} {fmt(r['images_per_s'], '.0f'):>11} {fmt(r['memory_mb'], '.0f'):>8} "
            f"{r['wall_s']:>6.0f}  {arts}"
        )
    bench = [
        r
        for r in rows
        if r["compressed"] and r["status"] == "completed" and (not args.bench or r["preset"] in args.bench.split(","))
    ]
    for r in bench:
        b = chexui("bench", str(r["dir"]), "--json", timeout=args.timeout)
        if b.returncode != 0:
            r["ok"], r["problems"] = False, r["problems"] + [f"bench failed: {b.stderr.strip()[-200:]}"]
            continue
        res = json.loads(b.stdout)
        print(f"bench {r['preset']}: CPU {res['cpu']} ({res['threads']} threads), GPU {res['gpu']}")
        for a in res["artifacts"]:
            g = a["gpu"]
            print(
                f"  {a['kind']:7} {a['bytes']:>12,} B  x{fmt(a['x_fp32'], '.2f')}  test AUC "
                f"{fmt(a['test_auc_mean'], '.4f')}  CPU b1 {a['cpu']['latency_b1_ms']:.1f} ms, b32 "
                f"{a['cpu']['throughput_b32']:.1f} img/s"
                + (
                    f"; GPU b1 {g['latency_b1_ms']:.2f} ms, b256 "
                    f"{g['throughput']:.0f} img/s, bf16 b256 "
                    f"{g['bf16_throughput']:.0f} img/s"
                    if g
                    else ""
                )
            )
    bad = [r for r in rows if not r["ok"]]
    for r in bad:
        print(f"FAIL {r['preset']}: {'; '.join(r['problems'])}")
    print(f"# {len(rows) - len(bad)}/{len(rows)} presets pass; total {time.time() - t0:.0f}s")
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
