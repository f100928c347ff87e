"""Copy real runs into tests/data/runs/ for the compare/report tests (config + events, no checkpoints):

    python -m tests.data.record_runs RUNS_DIR [RUN_OR_SWEEP_ID ...]

Progress events are dropped (the tables never read them); sweep state files come along so a sweep id
works as a RUN argument. The recorded set is the demo-grid sweep plus a pruned+QAT and a QAT run.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from engine.events import read_events

HERE = Path(__file__).parent / "runs"


def main(argv: list[str]) -> None:
    src, ids = Path(argv[0]), argv[1:]
    HERE.mkdir(exist_ok=True)
    wanted = set()
    for ref in ids:
        sweep = src / ".sweeps" / f"{ref}.json"
        if sweep.is_file():
            (HERE / ".sweeps").mkdir(exist_ok=True)
            shutil.copy(sweep, HERE / ".sweeps" / sweep.name)
            wanted |= {p["run"] for p in json.loads(sweep.read_text())["points"] if p["run"]}
        else:
            wanted.add(ref)
    for rid in sorted(wanted):
        out = HERE / rid
        out.mkdir(exist_ok=True)
        shutil.copy(src / rid / "config.toml", out / "config.toml")
        events = [e for e in read_events(src / rid / "events.jsonl") if e["type"] != "progress"]
        (out / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        print(f"recorded {rid}: {len(events)} events")


if __name__ == "__main__":
    main(sys.argv[1:])
