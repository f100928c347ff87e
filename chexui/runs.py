"""The runs dir: creating run directories, finding them, and what state each run is in.

A run is *running* while its launcher process is alive (pid + start time in launcher.json), whatever
events.jsonl says; a run with no live launcher and no final `run_finished` has failed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chexui import slurm_jobs
from chexui.format import n_defined, slug
from chexui.runstate import RunState
from engine import rundir
from engine.errors import UserError
from engine.events import STOP_FILE, final_status
from engine.fsutil import read_regular, write_atomic
from engine.rundir import CONFIG_FILE, EVENTS_FILE
from engine.sanitize import clean

LAUNCHER_FILE = "launcher.json"


def runs_dir(override: str | Path | None = None) -> Path:
    return Path(override or os.environ.get("CHEXUI_RUNS_DIR") or "runs")


NAME_MAX = 80  # characters of a run name; the directory adds a 16-character time stamp


def run_id(name: str) -> str:
    """A new run's id: the time and the name as a safe slug (`new_run_dir` adds -1, -2 ... on a clash)."""
    if len(name) > NAME_MAX:
        raise UserError(f"--name: {len(name)} characters; at most {NAME_MAX}")
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{slug(name, 'run')}"


def check_new_run(base: Path, name: str) -> None:
    """What `new_run_dir` would refuse, checked before minutes of work that precede it (the dataset
    checked and decoded, the demo set made): a name over the limit, a runs dir that cannot be made."""
    run_id(name)
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _cannot_create(base, e) from None


def _cannot_create(base: Path, e: OSError) -> UserError:
    return UserError(
        f"{base}: cannot create a run directory ({e.strerror or e}); choose another with --runs-dir or $CHEXUI_RUNS_DIR"
    )


def new_run_dir(base: Path, name: str) -> Path:
    first = run_id(name)
    try:
        base.mkdir(parents=True, exist_ok=True)
        for k in range(1000):
            d = base / (first if k == 0 else f"{first}-{k}")
            try:
                d.mkdir()
            except FileExistsError:
                continue
            for sub in (rundir.CHECKPOINTS_DIR, rundir.EXPORT_DIR, rundir.LOGS_DIR):
                (d / sub).mkdir()
            return d
    except OSError as e:
        raise _cannot_create(base, e) from None
    raise UserError(f"{base}: cannot create a run directory for {name!r}")


def find_run(ref: str | Path, base: Path) -> Path:
    """RUN is a run id (dir name in the runs dir, or a unique prefix/suffix of one) or a path."""
    p = Path(ref)
    if (p / CONFIG_FILE).is_file() or (p / EVENTS_FILE).is_file():
        return p
    cand = base / str(ref)
    if cand.is_dir():
        return cand
    if base.is_dir():
        matches = [
            d for d in base.iterdir() if d.is_dir() and (d.name.startswith(str(ref)) or d.name.endswith(str(ref)))
        ]
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
    """The live launcher of this run, or None. launcher.json (pid and start time) only says where to
    look: it is in the run dir, which anyone may have written. The process counts only when the OS says
    it is this run's launcher: the recorded pid alive with the recorded start time, and its own command
    line (read from the OS) that of chexui's launcher for this very run dir (`-m chexui.launch RUN_DIR`),
    or of a chexui command whose engine child (`engine.torchrun ... --run-dir RUN_DIR`) runs it."""
    try:
        info = json.loads(read_regular(run_dir / LAUNCHER_FILE, 1 << 16))
        proc = psutil.Process(int(info["pid"]))
        if abs(proc.create_time() - float(info["create_time"])) >= 1.0 or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc if _runs_this_dir(proc, run_dir) else None
    except (OSError, UserError, ValueError, TypeError, KeyError, OverflowError, psutil.Error):
        return None  # missing, damaged, foreign, or not the process it claims to be


def _same_dir(arg: str, cwd: str, run_dir: Path) -> bool:
    return (Path(cwd) / arg).resolve() == run_dir.resolve()


def _runs_this_dir(proc: psutil.Process, run_dir: Path) -> bool:
    cmd, cwd = proc.cmdline(), proc.cwd()
    for i, arg in enumerate(cmd[:-2]):
        if arg == "-m" and cmd[i + 1] == "chexui.launch":
            return _same_dir(cmd[i + 2], cwd, run_dir)
    if not any(a == "chexui.cli" or Path(a).name == "chexui" for a in cmd[:3]):
        return False
    for child in proc.children():  # the in-process launcher of `chexui run --headless` / `compress`
        ccmd = child.cmdline()
        if "engine.torchrun" in ccmd and "--run-dir" in ccmd[:-1]:
            if _same_dir(ccmd[ccmd.index("--run-dir") + 1], child.cwd(), run_dir):
                return True
    return False


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
    write_atomic(run_dir / STOP_FILE, who)


def stop_run(run_dir: Path, timeout: float = 120.0) -> bool:
    """Ask a run's launcher to stop cleanly (stop request + SIGTERM); True once it has exited."""
    import signal

    info = load_run(run_dir)
    if info.slurm_job is not None:  # the job's launcher runs on a node: through the scheduler
        return stop_slurm_job(run_dir, info.slurm_job, timeout)
    proc = launcher_process(run_dir)
    if proc is None:
        raise UserError(
            f"run {run_dir.name} is not running (status {load_run(run_dir).status}; no live chexui "
            "launcher of this run dir)"
        )
    request_stop(run_dir, "chexui stop")
    proc.send_signal(signal.SIGTERM)
    return wait_gone(proc, timeout)


def stop_slurm_job(run_dir: Path, job_id: str, timeout: float) -> bool:
    """Stop a SLURM run's job cleanly: the stop request, TERM to the batch script alone (chexui's launcher,
    which has the engine checkpoint and stop), then `scancel`. True once the job has ended."""
    job = slurm_jobs.own_job(job_id, run_dir)
    if job is None or not job.active:
        state = f"it is {job.state}" if job else "the scheduler does not know it as this run's job"
        raise UserError(f"run {run_dir.name}: SLURM job {job_id} is not running ({state})")
    request_stop(run_dir, f"chexui stop (SLURM job {job_id})")
    if job.state == "RUNNING":
        slurm_jobs.scancel("--batch", "--signal=TERM", job_id)
    end = time.monotonic() + timeout
    _wait_job(job_id, end, lambda job: job is None or not job.active or job.state == "PENDING", 1.0)
    slurm_jobs.scancel(job_id)  # (a pending job; or one that did not end within the timeout)
    return _wait_job(job_id, end + 30, lambda job: job is None or not job.active, 0.5)


def _wait_job(job_id: str, until: float, done, every_s: float) -> bool:
    """Ask the scheduler every `every_s` seconds until `done(job)` (None: it no longer knows the job) or
    the monotonic time `until`; whether it was done."""
    while time.monotonic() < until:
        if done(slurm_jobs.jobs([job_id]).get(job_id)):
            return True
        time.sleep(every_s)
    return False


@dataclass
class RunInfo:
    run_dir: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  # why its events could not be read (a FIFO, a link, a huge file)
    job: slurm_jobs.Job | None = None  # a SLURM run's job as the scheduler reports it (`with_jobs`)
    _state: RunState = field(default_factory=RunState, repr=False, compare=False)
    _folded: int = field(default=0, repr=False, compare=False)  # how many of `events` _state has applied

    @property
    def id(self) -> str:
        return clean(self.run_dir.name)

    @property
    def status(self) -> str:
        if self.problem is not None:
            return "unreadable"
        if launcher_process(self.run_dir) is not None:
            return "running"
        final = final_status(self.events)
        if self.slurm_job is not None:  # its launcher runs on a node of the cluster: the scheduler knows
            job = self.job
            if job is not None and job.active:
                if job.state != "RUNNING":
                    return "pending"  # (waiting to start, or requeued and waiting to resume)
                if final is None:
                    return "running"
            if final is None:
                return "failed" if job is not None else "submitted"  # (ended without a final status)
        return final or ("failed" if self.events else "created")

    @property
    def slurm_job(self) -> str | None:
        """The SLURM job id of a run submitted with `chexui run --slurm`."""
        e = self.first("slurm_submitted")
        return clean(e["job_id"]) if e is not None else None

    def first(self, type_: str) -> dict | None:
        return next((e for e in self.events if e["type"] == type_), None)

    def last(self, type_: str) -> dict | None:
        return next((e for e in reversed(self.events) if e["type"] == type_), None)

    def summary(self) -> dict[str, Any]:
        """The run's row for `runs list`; a run dir whose files do not have the shapes chexui writes
        (hand-edited, foreign) gives a row saying so instead of breaking the whole listing."""
        if self.problem is None:
            try:
                return self._summary()
            except (AttributeError, TypeError, KeyError, ValueError, IndexError, OverflowError) as e:
                self.problem = f"events.jsonl: unexpected content ({type(e).__name__})"
        return {
            "id": self.id,
            "path": clean(str(self.run_dir)),
            "status": "unreadable",
            "preset": None,
            "arch": None,
            "sweep": None,
            "world_size": None,
            "epochs": 0,
            "best_epoch": None,
            "best_val_auc": None,
            "best_val_labels": None,
            "test_model": None,
            "test_auc": None,
            "test_labels": None,
            "test_auc_ci": None,
            "sparsity": None,
            "smallest_artifact": None,
            "duration_s": None,
            "started": None,
            "slurm_job": None,
            "slurm_state": None,
            "problem": clean(self.problem),
        }

    @property
    def state(self) -> RunState:
        """The events folded (chexui/runstate.py), each once (events appended since are folded on the next
        read): every fact a listing or a table reads of the run."""
        for e in self.events[self._folded :]:
            self._folded += 1
            self._state.apply(e)
        return self._state

    def best_epoch(self) -> int | None:
        """The epoch of the model the run ships (`RunState.best_epoch`)."""
        return self.state.best_epoch

    def _summary(self) -> dict[str, Any]:
        st = self.state
        cfg, best_val, test = st.config, st.best_val, st.test
        return {
            "id": self.id,
            "path": clean(str(self.run_dir)),
            "status": self.status,
            "preset": cfg.get("name"),
            "arch": cfg.get("model", {}).get("arch"),
            "sweep": cfg.get("sweep"),
            "world_size": st.world_size,
            "epochs": st.epochs[-1]["epoch"] if st.epochs else 0,
            "best_epoch": st.best_epoch,
            "best_val_auc": best_val["val_auc_mean"] if best_val else None,
            "best_val_labels": n_defined(best_val["val_auc"]) if best_val else None,
            "test_model": test.get("model") if test else None,
            "test_auc": test["auc_mean"] if test else None,
            "test_labels": n_defined(test["auc"]) if test else None,
            "test_auc_ci": test.get("auc_mean_ci") if test else None,
            "sparsity": best_val.get("sparsity") if best_val else None,
            "smallest_artifact": {k: small[k] for k in ("kind", "bytes")} if (small := st.smallest_artifact) else None,
            "duration_s": st.duration_s,
            "started": st.started_ts,
            "slurm_job": self.slurm_job,
            "slurm_state": clean(self.job.state) if self.job is not None else None,
        }


def exit_code(status: str, events: Sequence[dict[str, Any]] = ()) -> int:
    """chexui's exit code for a run in `status`: 0 completed, stopped (or not ended yet, for `watch`);
    2 when the engine's error says the user can fix it (bad data, a full disk); else 1."""
    if status in ("completed", "stopped", "running", "pending", "submitted"):
        return 0
    return 2 if any(e["type"] == "error" and e.get("code") == 2 for e in events) else 1


def load_run(run_dir: Path) -> RunInfo:
    """A run's events; a run dir whose events cannot be read (not a regular file, too large) gives a
    RunInfo with no events and the reason in `problem`, never an exception."""
    try:
        return RunInfo(run_dir, rundir.events(run_dir))
    except UserError as e:
        return RunInfo(run_dir, [], problem=str(e))


def run_dirs(base: Path) -> list[Path]:
    """Every run dir of the runs dir (one with a config.toml), oldest first."""
    if not base.is_dir():
        return []
    try:
        return sorted(d for d in base.iterdir() if _is_run_dir(d))
    except OSError as e:
        raise UserError(f"{base}: cannot list the runs dir ({e.strerror or e})") from None


def list_runs(base: Path) -> list[RunInfo]:
    """Every run of the runs dir; one that cannot be read is listed as unreadable, and never keeps the
    others from being listed."""
    return with_jobs([load_run(d) for d in run_dirs(base)])


def with_jobs(infos: list[RunInfo]) -> list[RunInfo]:
    """The SLURM runs among them get their job's state from the scheduler (one squeue call for all)."""
    ids = [j for i in infos if i.problem is None and (j := i.slurm_job)]
    if ids:
        found = slurm_jobs.jobs(ids)
        for info in infos:
            job = found.get(info.slurm_job or "") if info.problem is None else None
            info.job = job if job is not None and slurm_jobs.is_runs(job, info.run_dir) else None
    return infos


def _signature(run_dir: Path) -> tuple:
    """What changes when a run's row may change: its events file and launcher record (size, mtime,
    inode; links not followed). Stat calls only: cheap enough for hundreds of runs every few seconds."""
    sig: list = []
    for name in (EVENTS_FILE, LAUNCHER_FILE):
        try:
            st = os.stat(run_dir / name, follow_symlinks=False)
            sig.append((st.st_size, st.st_mtime_ns, st.st_ino))
        except OSError:
            sig.append(None)
    return tuple(sig)


class RunIndex:
    """The rows (`RunInfo.summary()` and "dir", the run dir's real path) of every run in a runs dir, kept
    up to date cheaply: `refresh()` stats each run and reads again only the runs whose files changed, or
    that are running (a launcher may die without writing). The runs browser refreshes it every few
    seconds over hundreds of runs."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self._rows: dict[str, tuple[tuple, dict[str, Any]]] = {}

    def refresh(self) -> bool:
        """Read what changed; True when a row was added, removed or changed."""
        rows: dict[str, Any] = {}  # key -> (signature, row), or a RunInfo to summarise below
        changed = False
        for d in run_dirs(self.base):
            key, sig = str(d), _signature(d)
            old = self._rows.get(key)
            if old is not None and old[0] == sig and old[1]["status"] not in ("running", "pending", "submitted"):
                rows[key] = old
            else:
                rows[key] = (sig, load_run(d))
        # the runs read again, with one squeue call for every SLURM run among them
        with_jobs([v[1] for v in rows.values() if isinstance(v[1], RunInfo)])
        for key, (sig, value) in rows.items():
            if isinstance(value, RunInfo):
                old = self._rows.get(key)
                row = {**value.summary(), "dir": key}
                changed |= old is None or old[1] != row
                rows[key] = (sig, row)
        changed |= rows.keys() != self._rows.keys()
        self._rows = rows
        return changed

    @property
    def rows(self) -> list[dict[str, Any]]:
        return [row for _, row in self._rows.values()]


def _is_run_dir(d: Path) -> bool:
    try:
        return d.is_dir() and (d / CONFIG_FILE).is_file()
    except OSError:  # no permission to look inside: not one of this user's runs
        return False
