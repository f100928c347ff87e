"""The runs dir: creating run directories, finding them, and what state each run is in.

A run is *running* while its launcher process is alive (pid + start time in launcher.json), whatever
events.jsonl says; a run with no live launcher and no final `run_finished` has failed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chexui.format import n_defined, slug
from engine.errors import UserError
from engine.events import STOP_FILE, final_status, last_evaluation, read_events
from engine.fsutil import write_atomic
from engine.sanitize import clean

LAUNCHER_FILE = "launcher.json"


def runs_dir(override: str | Path | None = None) -> Path:
    return Path(override or os.environ.get("CHEXUI_RUNS_DIR") or "runs")


NAME_MAX = 80  # characters of a run name; the directory adds a 16-character time stamp


def new_run_dir(base: Path, name: str) -> Path:
    if len(name) > NAME_MAX:
        raise UserError(f"--name: {len(name)} characters; at most {NAME_MAX}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = slug(name, "run")
    try:
        base.mkdir(parents=True, exist_ok=True)
        for k in range(1000):
            d = base / (f"{stamp}-{safe}" if k == 0 else f"{stamp}-{safe}-{k}")
            try:
                d.mkdir()
            except FileExistsError:
                continue
            for sub in ("checkpoints", "export", "logs"):
                (d / sub).mkdir()
            return d
    except OSError as e:
        raise UserError(f"{base}: cannot create a run directory ({e.strerror or e}); "
                        "choose another with --runs-dir or $CHEXUI_RUNS_DIR") from None
    raise UserError(f"{base}: cannot create a run directory for {name!r}")


def find_run(ref: str | Path, base: Path) -> Path:
    """RUN is a run id (dir name in the runs dir, or a unique prefix/suffix of one) or a path."""
    p = Path(ref)
    if (p / "config.toml").is_file() or (p / "events.jsonl").is_file():
        return p
    cand = base / str(ref)
    if cand.is_dir():
        return cand
    if base.is_dir():
        matches = [d for d in base.iterdir() if d.is_dir() and (d.name.startswith(str(ref)) or d.name.endswith(str(ref)))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise UserError(f"run '{ref}' is ambiguous in {base}: {', '.join(sorted(m.name for m in matches))}")
    raise UserError(f"run '{ref}' not found (neither a run directory nor a run id in {base})")


def write_launcher(run_dir: Path, pid: int | None = None) -> None:
    pid = pid or os.getpid()
    info = {"pid": pid, "create_time": psutil.Process(pid).create_time(), "host": os.uname().nodename}
    write_atomic(run_dir / LAUNCHER_FILE, json.dumps(info))


def launcher_process(run_dir: Path) -> psutil.Process | None:
    """The live launcher of this run, or None (a reused pid does not count)."""
    try:
        info = json.loads((run_dir / LAUNCHER_FILE).read_text())
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - info["create_time"]) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE:
            return proc
    except (OSError, ValueError, TypeError, KeyError, psutil.Error):  # missing, damaged or foreign
        pass
    return None


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Wait until `proc` has exited (a zombie awaiting its parent counts as exited)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def request_stop(run_dir: Path, who: str) -> None:
    """The stop request the engine looks for when it gets SIGTERM: with it, the run ends at the next
    step with a checkpoint and status "stopped"; without it, SIGTERM means a peer died."""
    (run_dir / STOP_FILE).write_text(who)


def stop_run(run_dir: Path, timeout: float = 120.0) -> bool:
    """Ask a run's launcher to stop cleanly (stop request + SIGTERM); True once it has exited."""
    import signal
    proc = launcher_process(run_dir)
    if proc is None:
        raise UserError(f"run {run_dir.name} is not running (status {load_run(run_dir).status})")
    request_stop(run_dir, "chexui stop")
    proc.send_signal(signal.SIGTERM)
    return wait_gone(proc, timeout)


@dataclass
class RunInfo:
    run_dir: Path
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return clean(self.run_dir.name)

    @property
    def status(self) -> str:
        if launcher_process(self.run_dir) is not None:
            return "running"
        return final_status(self.events) or ("failed" if self.events else "created")

    def first(self, type_: str) -> dict | None:
        return next((e for e in self.events if e["type"] == type_), None)

    def last(self, type_: str) -> dict | None:
        return next((e for e in reversed(self.events) if e["type"] == type_), None)

    def summary(self) -> dict[str, Any]:
        """The run's row for `runs list`; a run dir whose files do not have the shapes chexui writes
        (hand-edited, foreign) gives a row saying so instead of breaking the whole listing."""
        try:
            return self._summary()
        except (AttributeError, TypeError, KeyError, ValueError, IndexError) as e:
            return {"id": self.id, "path": clean(str(self.run_dir)), "status": "unreadable", "preset": None,
                    "arch": None, "sweep": None, "world_size": None, "epochs": 0, "best_val_auc": None,
                    "best_val_labels": None, "test_auc": None, "test_labels": None, "test_auc_ci": None,
                    "duration_s": None, "started": None,
                    "problem": f"events.jsonl: unexpected content ({type(e).__name__})"}

    def _summary(self) -> dict[str, Any]:
        started = self.first("run_started") or {}
        cfg = started.get("config", {})
        epochs = [e for e in self.events if e["type"] == "epoch_ended"]
        vals = [e for e in epochs if e.get("val_auc_mean") is not None]
        best_val = max(vals, key=lambda e: e["val_auc_mean"]) if vals else None
        test = last_evaluation(self.events)
        finished = self.last("run_finished")
        restarted = self.last("restarted")
        duration = None
        if self.events:
            duration = (finished or self.events[-1])["ts"] - self.events[0]["ts"]
        return {
            "id": self.id, "path": clean(str(self.run_dir)), "status": self.status,
            "preset": cfg.get("name"), "arch": cfg.get("model", {}).get("arch"),
            "sweep": cfg.get("sweep"),
            "world_size": (restarted or started).get("world_size"),
            "epochs": epochs[-1]["epoch"] if epochs else 0,
            "best_val_auc": best_val["val_auc_mean"] if best_val else None,
            "best_val_labels": n_defined(best_val["val_auc"]) if best_val else None,
            "test_auc": test["auc_mean"] if test else None,
            "test_labels": n_defined(test["auc"]) if test else None,
            "test_auc_ci": test.get("auc_mean_ci") if test else None,
            "duration_s": duration,
            "started": started.get("ts"),
        }


def exit_code(status: str, events: list[dict[str, Any]] = ()) -> int:
    """chexui's exit code for a run in `status`: 0 completed, stopped (or still running, for `watch`);
    2 when the engine's error says the user can fix it (bad data, a full disk); else 1."""
    if status in ("completed", "stopped", "running"):
        return 0
    return 2 if any(e["type"] == "error" and e.get("code") == 2 for e in events) else 1


def load_run(run_dir: Path) -> RunInfo:
    return RunInfo(run_dir, read_events(run_dir / "events.jsonl"))


def list_runs(base: Path) -> list[RunInfo]:
    if not base.is_dir():
        return []
    dirs = sorted(d for d in base.iterdir() if d.is_dir() and (d / "config.toml").is_file())
    return [load_run(d) for d in dirs]
