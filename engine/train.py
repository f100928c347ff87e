"""CheXNet training under torchrun: `torchrun ... -m engine.train --config FILE --run-dir DIR`.

The entry point only: it reads the config, sets up the process group and hands over to
`engine.training.trainer.Run.train()`, which holds the phase order; nothing imports this module but tests.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine import config
from engine.errors import UserError, one_line
from engine.runtime import dist, procs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="engine.train", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--config", required=True, help="resolved run config (TOML)")
    ap.add_argument("--run-dir", required=True, help="run directory (events, checkpoints, logs)")
    args = ap.parse_args(argv)
    # torchrun starts workers in their own sessions: none may outlive it, not even one whose agent was
    # killed while it was still importing torch
    agent = os.environ.get("CHEXUI_AGENT_PID")
    procs.die_with_parent(int(agent) if agent else None)
    try:
        cfg = config.load_run_config(args.config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    d = dist.setup(cfg["distributed"]["backend"])
    # the trainer (torchvision, scikit-learn, the compression methods: 3-4 s of imports) only once the
    # process group stands: a backend this machine cannot start fails before them
    from engine.training.trainer import Run

    try:
        run = Run(cfg, Path(args.run_dir), d)
    except UserError as e:  # e.g. the run dir's events.jsonl is a link: nothing is written through it
        print(f"error: {one_line(e)}", file=sys.stderr)
        dist.cleanup()
        return 2
    try:
        return run.train()
    finally:
        if run.events:
            run.events.close()
        dist.cleanup()


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # skip the interpreter's teardown of torch's thousands of modules: 1.2 s per process, measured
    # (`python -c "import engine.training.trainer"` 4.2 s vs 2.9 s with os._exit). Everything this process
    # wrote is closed by now (events, logs; checkpoints are fsynced when written).
    os._exit(code)
