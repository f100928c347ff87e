"""What the SLURM scheduler says and does about a job: squeue's view of jobs (`jobs`, `Job`), whether a
job is provably a run's (`is_runs`), signals to a job's steps, and a job's requeue of itself. Only SLURM's
own commands, nothing of chexui: the launcher (inside the job), the runs listing and `chexui stop` (outside
it) use it; chexui/slurm.py writes and submits the job.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = "slurm.sbatch"  # a SLURM run's batch script, in its run dir

# the scheduler's states of a job that has not ended (squeue's long names)
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")  # fmt: skip


@dataclass
class Job:
    """A job as the scheduler reports it (squeue)."""

    id: str
    state: str  # PENDING, RUNNING, COMPLETED, CANCELLED, ...
    reason: str  # why it is pending ("Resources", "BeginTime"), or "None"
    nodes: str  # the allocated nodes, or ""
    uid: int
    command: str  # the batch script's path

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def describe(self) -> str:
        where = f" on {self.nodes}" if self.nodes and self.state == "RUNNING" else ""
        why = f" ({self.reason})" if self.reason not in ("", "None") and self.state != "RUNNING" else ""
        return f"SLURM job {self.id}: {self.state}{where}{why}"


_FIELDS = "%i\t%T\t%r\t%N\t%U\t%o"


def jobs(ids: list[str]) -> dict[str, Job]:
    """The scheduler's record of these jobs (those it still knows, ended ones for a few minutes after);
    {} when no scheduler answers here. One squeue call for them all."""
    ids = [i for i in ids if i.isdigit()]
    if not ids or shutil.which("squeue") is None:
        return {}
    try:
        r = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", ",".join(ids), "-o", _FIELDS],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, Job] = {}
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 6 and parts[0] in ids and parts[4].isdigit():
            found[parts[0]] = Job(parts[0], parts[1], parts[2], parts[3], int(parts[4]), parts[5])
    return found


def is_runs(job: Job, run_dir: Path) -> bool:
    """Whether the job is provably this run's: this user's, running this run dir's script. (The job id
    comes from the run dir's events, which anyone who could write the run dir could have set to another
    job of yours.)"""
    if job.uid != os.getuid():
        return False
    try:
        return Path(job.command).resolve() == (run_dir / SCRIPT).resolve()
    except (OSError, RuntimeError):
        return False


def own_job(job_id: str, run_dir: Path) -> Job | None:
    """The run's job as the scheduler reports it, if it is provably the run's (`is_runs`)."""
    job = jobs([job_id]).get(job_id)
    return job if job is not None and is_runs(job, run_dir) else None


def scancel(*args: str) -> None:
    subprocess.run(["scancel", *args], capture_output=True, text=True, timeout=30)


def signal_steps(job_id: str, sig: str) -> None:
    """Signal every process of the job's steps (not the batch script): what srun would do, but without
    cancelling the step, so the engine can finish its step and checkpoint."""
    scancel(f"--signal={sig}", job_id)


def requeue_self() -> str:
    """From inside the job (the launcher, after the stop SLURM's warning asked for): `scontrol requeue`."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return "not a SLURM job: nothing to requeue"
    r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"SLURM job {job_id}: requeue refused: {(r.stderr or r.stdout).strip()[:200]}"
    return f"SLURM job {job_id} requeued: it resumes from checkpoints/last.pt when the scheduler starts it again"
