"""Fault injection (by hand, not CI): SIGKILL the launcher, the torchrun agent or a worker at random
moments - a third of the tries at the moment a checkpoint is being written - then resume each run until
it completes, and compare it with an uninterrupted run. Prints: tries, runs whose final test AUROC
differs from the uninterrupted run's, leftover processes, leftover temp files (goal: 0 for the last three).

    bash benchmarks/faults.sh            # TRIES=30 by default
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import config  # noqa: E402
from engine.data import demo  # noqa: E402
from engine.events import final_status, last_evaluation, read_events  # noqa: E402

# a 2-process tiny run on the demo phantoms (the preset is data: built from the config schema)
RUN = {
    "name": "faults",
    "data": {"image_size": 32, "workers": 0, "val_fraction": 0.2, "test_fraction": 0.25},
    "model": {"arch": "resnet18", "pretrained": "none"},
    "train": {"epochs": 3, "batch_size": 8, "early_stop_patience": 0},
    "distributed": {"nproc": 2},
    "export": {"enabled": False},
}


def cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chexui.cli", *map(str, args)],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **kw,
    )


def test_auc(run: Path) -> dict | None:
    ev = read_events(run / "events.jsonl")
    test = last_evaluation(ev)
    return test["auc"] if test and final_status(ev) == "completed" else None


def victims(launcher: psutil.Process, kind: str) -> list[psutil.Process]:
    try:
        family = [launcher] + launcher.children(recursive=True)
    except psutil.Error:
        return []
    pick = {
        "launcher": lambda p: p.pid == launcher.pid,
        "torchrun": lambda p: "engine.torchrun" in p.cmdline(),
        "worker": lambda p: "engine.train" in p.cmdline() and "engine.torchrun" not in p.cmdline(),
    }[kind]
    out = []
    for p in family:
        try:
            if pick(p):
                out.append(p)
        except psutil.Error:
            pass
    return out


def one_try(i: int, preset: Path, work: Path, rng: random.Random, run_s: float) -> dict:
    runs = work / f"try{i:02d}"
    kind = rng.choice(["launcher", "torchrun", "worker"])
    at_checkpoint = i % 3 == 0
    launcher = cli("run", "--headless", "--preset", preset, "--runs-dir", runs)
    proc = psutil.Process(launcher.pid)
    deadline = time.time() + (run_s * 1.5 if at_checkpoint else rng.uniform(2.0, run_s))
    killed = "none"
    while time.time() < deadline and launcher.poll() is None:
        writing = at_checkpoint and any(runs.glob("*/checkpoints/.*.tmp"))
        if writing or (not at_checkpoint and time.time() >= deadline - 0.02):
            break
        time.sleep(0.005 if at_checkpoint else 0.02)
    if launcher.poll() is None:
        targets = victims(proc, kind)
        if kind == "worker" and targets:
            targets = [rng.choice(targets)]
        for p in targets:
            try:
                p.send_signal(signal.SIGKILL)
                killed = f"{kind}{' during a checkpoint write' if at_checkpoint else ''}"
            except psutil.Error:
                pass
    launcher.wait(timeout=300)
    run = next(iter(sorted(runs.glob("*"))), None)
    resumes = 0
    while run is not None and test_auc(run) is None and resumes < 5:
        time.sleep(0.5)  # the killed launcher's orphans get their parent-death signal
        resumes += 1
        cli("run", "--resume", run, "--headless", "--runs-dir", runs).wait(timeout=300)
    time.sleep(1.0)
    left = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if str(runs) in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE
    ]
    temps = [str(p) for p in runs.rglob("*.tmp")] + [str(p) for p in runs.rglob("best.next.pt")]
    return {
        "try": i,
        "killed": killed,
        "resumes": resumes,
        "auc": test_auc(run) if run else None,
        "leftover_processes": left,
        "leftover_temps": temps,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, default=30)
    ap.add_argument("--work", default="/tmp/chexui-faults")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CHEXUI_CACHE_DIR", str(work / "cache"))
    root = work / "data"
    if not (root / "Data_Entry_2017.csv").is_file():
        demo.generate(root, n_images=160, size=32, seed=1)
    preset = work / "faults.toml"
    preset.write_text(config.dumps(config.merge(RUN, {"data": {"root": str(root)}})))
    t0 = time.time()
    cli("run", "--headless", "--preset", preset, "--runs-dir", work / "reference").wait(timeout=600)
    run_s = time.time() - t0
    ref = test_auc(next(iter((work / "reference").glob("*"))))
    assert ref is not None, "the uninterrupted reference run did not complete"
    defined = [v for v in ref.values() if v]
    print(f"reference run: {run_s:.0f}s, test AUROC mean {sum(defined) / len(defined):.4f}", flush=True)
    rng = random.Random(args.seed)
    rows = []
    for i in range(1, args.tries + 1):
        r = one_try(i, preset, work, rng, run_s)
        same = r["auc"] is not None and all(
            (a is None and r["auc"][k] is None)
            or (a is not None and r["auc"][k] is not None and abs(a - r["auc"][k]) <= 1e-6)
            for k, a in ref.items()
        )
        r["differs"] = not same
        rows.append(r)
        print(
            f"try {i:2d}: killed {r['killed']:<40} resumes {r['resumes']} "
            f"{'same test AUROC' if same else 'DIFFERENT or not completed'}"
            f"{'; leftover processes ' + str(r['leftover_processes']) if r['leftover_processes'] else ''}"
            f"{'; leftover temp files ' + str(r['leftover_temps']) if r['leftover_temps'] else ''}",
            flush=True,
        )
    print(
        f"tries: {len(rows)}  killed: {sum(r['killed'] != 'none' for r in rows)}  "
        f"differing test AUROC: {sum(r['differs'] for r in rows)}  "
        f"leftover processes: {sum(len(r['leftover_processes']) for r in rows)}  "
        f"leftover temp files: {sum(len(r['leftover_temps']) for r in rows)}"
    )
    json.dump(rows, open(work / "faults.json", "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
