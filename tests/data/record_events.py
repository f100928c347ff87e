"""Re-record the event files the TUI tests replay (real runs on a tiny demo set, CPU, a minute or two):

    python -m tests.data.record_events

two_rank.jsonl: 2 processes, finished, test AUROC; failed.jsonl: an image corrupted after epoch 1;
prune.jsonl: gradual magnitude pruning (sparsity per epoch); full.jsonl: pruning and QAT with export,
operating points and bootstrap CIs (every event type and field a finished run writes: the hostile-input
tests mutate it); lr_find.jsonl: `chexui lr-find` (the LR range test, 40 steps).
`python -m tests.data.record_events full` records only the named ones.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.data import demo
from engine.events import read_events
from tests.conftest import TINY_PRESET

HERE = Path(__file__).parent / "events"


def chexui(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chexui.cli", *map(str, args)], stdin=subprocess.DEVNULL)


def main() -> None:
    HERE.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="chexui-record-"))
    data = demo.generate(work / "data", 160, 32, seed=1)
    preset = work / "tiny.toml"
    preset.write_text(TINY_PRESET.format(desc="recorded run", root=data, epochs=3))

    def record(name: str, *args, corrupt: bool = False, command: tuple = ("run", "--headless", "--preset")) -> None:
        runs = work / name
        proc = chexui(*command, preset, "--runs-dir", runs, *args)
        if corrupt:  # corrupt a training image once epoch 1 is checkpointed
            while True:
                dirs = list(runs.glob("*/events.jsonl")) if runs.exists() else []
                if dirs and any(e["type"] == "checkpoint_saved" for e in read_events(dirs[0])):
                    import json

                    victim = json.loads((dirs[0].parent / "split.json").read_text())["train"][0]
                    p = data / "images" / victim
                    p.write_bytes(p.read_bytes()[:100])
                    break
                time.sleep(0.1)
        proc.wait()
        shutil.copy(next(runs.glob("*/events.jsonl")), HERE / f"{name}.jsonl")
        print(f"recorded {name}.jsonl (exit {proc.returncode})")

    only = set(sys.argv[1:])
    wanted = lambda name: not only or name in only  # noqa: E731
    if wanted("two_rank"):
        record("two_rank", "--nproc", 2)
    if wanted("prune"):
        record(
            "prune",
            "--set",
            "prune.enabled=true",
            "--set",
            "prune.final_sparsity=0.7",
            "--set",
            "prune.end_epoch=2.0",
            "--set",
            "prune.frequency_steps=2",
        )
    if wanted("failed"):
        record("failed", "--set", "data.cache=false", corrupt=True)
    if wanted("full"):
        record(
            "full",
            "--set",
            "export.enabled=true",
            "--set",
            "prune.enabled=true",
            "--set",
            "prune.end_epoch=2.0",
            "--set",
            "prune.frequency_steps=2",
            "--set",
            "quantize.enabled=true",
            "--set",
            "quantize.scope=all",
        )
    if wanted("lr_find"):
        record("lr_find", "--set", "lr_find.steps=40", command=("lr-find",))


if __name__ == "__main__":
    main()
