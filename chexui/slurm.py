"""A run as a SLURM job (`chexui run --slurm`): the sbatch script, its submission, the scheduler's view of
the job (`watch`, `runs list`), and its stop and requeue.

The batch script's own process is chexui's launcher (`python -m chexui.launch RUN_DIR --slurm-job -- srun
...`), as on one machine: it writes logs/engine.log and the final status if the engine could not. SLURM
warns it with USR1 `slurm.signal_s` seconds before the time limit or a preemption (`--signal=B:USR1@N`):
the engine checkpoints at its next step and stops, and the job requeues itself (`--requeue`, `scontrol
requeue`); the same script then resumes the run from checkpoints/last.pt (one `restarted` event).
`chexui stop` sends TERM to the batch script alone (a clean stop, status "stopped"), then `scancel`.

One task per node (`--ntasks-per-node=1`); each task is torchrun with `distributed.nproc` workers, the
same command `chexui run` starts on one machine (chexui/launch.py: torchrun_command), joined by torchrun's
c10d rendezvous on the first node of the allocation. The node rank and the rendezvous endpoint reach
each task through torchrun's own environment variables (PET_NODE_RANK from that task's $SLURM_NODEID,
PET_RDZV_ENDPOINT from the first node's address, which the batch script looks up once): the command
itself is the same on every node. The engine writes the run dir (shared between the nodes) as always;
the job's own output goes to logs/slurm-JOBID.out there.

Every [slurm] value was checked against engine/config.py: SLURM_SAFE when the preset was read, and
every value in the script is quoted as data besides: a shared preset cannot make the script run a
command of its own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.rundir import CONFIG_FILE

SCRIPT = "slurm.sbatch"  # in the run dir
REQUEUE_SIGNAL = "USR1"  # the launcher's "make way" (chexui/launch.py: run_to_end)
# the scheduler's states of a job that has not ended (squeue's long names)
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT")  # fmt: skip
# the first node's address for the c10d rendezvous (its name may not resolve on the others)
RENDEZVOUS = [
    'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
    'head_addr=$(scontrol show node "$head" | sed -n "s/.*NodeAddr=\\([^ ]*\\).*/\\1/p")',
]


def script(cfg: dict[str, Any], run_dir: Path) -> str:
    """The sbatch script of a saved run config (`run_dir/config.toml`)."""
    from chexui.launch import NodeSpec, engine_env, torchrun_command

    sl = cfg["slurm"]
    nodes = sl["nodes"]
    if nodes == 1:  # torchrun's loopback rendezvous, as `chexui run` on one machine
        cmd = torchrun_command(cfg, run_dir, NodeSpec())
    else:
        cmd = torchrun_command(cfg, run_dir, NodeSpec(nnodes=nodes, node_rank=0, rdzv_endpoint="-"))
        for flag in ("--node-rank", "--rdzv-endpoint"):  # each task's, from the environment (below)
            i = cmd.index(flag)
            del cmd[i : i + 2]
        cmd[cmd.index("--rdzv-id") + 1] = run_dir.name
    sbatch = [
        f"--job-name=chexui-{run_dir.name}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={sl['cpus_per_task']}",
        f"--time={sl['time']}",
        *([f"--gpus-per-node={sl['gpus_per_node']}"] if sl["gpus_per_node"] else []),
        *([f"--partition={sl['partition']}"] if sl["partition"] else []),
        *([f"--account={sl['account']}"] if sl["account"] else []),
        *([f"--mem={sl['mem']}"] if sl["mem"] else []),
        f"--output={run_dir / 'logs' / 'slurm-%j.out'}",
        "--open-mode=append",  # (a requeued job's output follows its first part)
        "--requeue",
        f"--signal=B:{REQUEUE_SIGNAL}@{sl['signal_s']}",
        *sl["sbatch"],
    ]
    env = engine_env(single_node=False)
    lines = [
        "#!/bin/bash",
        f"# chexui run {run_dir.name}: {cfg.get('name', '')} ({CONFIG_FILE} in {run_dir})",
        *(f"#SBATCH {opt}" for opt in sbatch),
        "set -euo pipefail",
        *([f"module load {' '.join(shlex.quote(m) for m in sl['modules'])}"] if sl["modules"] else []),
        *(f"export {k}={shlex.quote(v)}" for k, v in (item.split("=", 1) for item in sl["env"])),
        f"export PYTHONPATH={shlex.quote(env['PYTHONPATH'])}",
        "export PYTHONUNBUFFERED=1",
        *(RENDEZVOUS + [f'export PET_RDZV_ENDPOINT="${{head_addr:-$head}}:{sl["port"]}"'] if nodes > 1 else []),
        f"# chexui's launcher runs the srun line below: on {REQUEUE_SIGNAL} (the time limit or a preemption ahead) the",
        "# engine checkpoints and stops and the job requeues; on TERM (chexui stop) the run stops cleanly",
        f"exec {shlex.quote(sys.executable)} -m chexui.launch {shlex.quote(str(run_dir))} --slurm-job -- \\",
        f"  srun --nodes={nodes} --ntasks-per-node=1 --cpus-per-task={sl['cpus_per_task']} "
        "bash -c 'PET_NODE_RANK=$SLURM_NODEID exec \"$@\"' chexui-task \\",
        "  " + shlex.join(cmd),
    ]
    return "\n".join(lines) + "\n"


def check_gpus(cfg: dict[str, Any]) -> None:
    sl, nproc = cfg["slurm"], cfg["distributed"]["nproc"]
    if sl["gpus_per_node"] and sl["gpus_per_node"] != nproc:
        raise UserError(
            f"--slurm: slurm.gpus_per_node = {sl['gpus_per_node']} but distributed.nproc = {nproc} processes "
            f"per node: one process per GPU (--nproc {sl['gpus_per_node']})"
        )


def submit_run(
    cfg: dict[str, Any], base: Path, name: str, prepare: Callable[[dict[str, Any]], object]
) -> tuple[Path, str]:
    """A new run dir for the config (its nodes from slurm.nodes) with its sbatch script, submitted; the
    job id is its first event (`slurm_submitted`). `prepare(cfg)` readies the data first (the nodes
    find the cache built). What `chexui run --slurm` and the launcher's Submit to SLURM do."""
    from chexui.launch import save_config
    from chexui.runs import new_run_dir
    from engine.events import EventWriter
    from engine.fsutil import write_atomic
    from engine.rundir import EVENTS_FILE

    check_gpus(cfg)
    if shutil.which("sbatch") is None:
        raise UserError("--slurm: sbatch not found on PATH (run on a SLURM login node, or --dry-run to see the script)")
    cfg = {**cfg, "distributed": {**cfg["distributed"], "nnodes": cfg["slurm"]["nodes"]}}
    prepare(cfg)
    run_dir = new_run_dir(base, name).resolve()
    save_config(cfg, run_dir)
    path = run_dir / SCRIPT
    write_atomic(path, script(cfg, run_dir).encode())
    job = submit(path)
    w = EventWriter(run_dir / EVENTS_FILE)
    w.emit("slurm_submitted", job_id=job, script=SCRIPT, nodes=cfg["slurm"]["nodes"])
    w.close()
    return run_dir, job


def submit(script_path: Path) -> str:
    """`sbatch --parsable SCRIPT`; the job id. UserError when sbatch is missing or refuses the job."""
    if shutil.which("sbatch") is None:
        raise UserError("--slurm: sbatch not found on PATH (run on a SLURM login node, or --dry-run to see the script)")
    r = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True, timeout=60)
    job = r.stdout.strip().split(";")[0]  # (--parsable: "JOBID" or "JOBID;CLUSTER")
    if r.returncode != 0 or not job.isdigit():
        raise UserError(f"--slurm: sbatch refused {script_path}: {(r.stderr or r.stdout).strip()[:300]}")
    return job


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


def _scancel(*args: str) -> None:
    subprocess.run(["scancel", *args], capture_output=True, text=True, timeout=30)


def signal_steps(job_id: str, sig: str) -> None:
    """Signal every process of the job's steps (not the batch script): what srun would do, but without
    cancelling the step, so the engine can finish its step and checkpoint."""
    _scancel(f"--signal={sig}", job_id)


def stop(run_dir: Path, job_id: str, timeout: float) -> bool:
    """Stop this run's job cleanly: the stop request, TERM to the batch script alone (chexui's launcher,
    which has the engine checkpoint and stop), then `scancel`. True once the job has ended."""
    from chexui.runs import request_stop

    job = own_job(job_id, run_dir)
    if job is None or not job.active:
        state = f"it is {job.state}" if job else "the scheduler does not know it as this run's job"
        raise UserError(f"run {run_dir.name}: SLURM job {job_id} is not running ({state})")
    request_stop(run_dir, f"chexui stop (SLURM job {job_id})")
    if job.state == "RUNNING":
        _scancel("--batch", "--signal=TERM", job_id)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        now = jobs([job_id]).get(job_id)
        if now is None or not now.active or now.state == "PENDING":
            break
        time.sleep(1.0)
    _scancel(job_id)  # (a pending job; or one that did not end within the timeout)
    while time.monotonic() < end + 30:
        now = jobs([job_id]).get(job_id)
        if now is None or not now.active:
            return True
        time.sleep(0.5)
    return False


def requeue_self() -> str:
    """From inside the job (the launcher, after the stop SLURM's warning asked for): `scontrol requeue`."""
    job_id = os.environ.get("SLURM_JOB_ID", "")
    if not job_id.isdigit():
        return "not a SLURM job: nothing to requeue"
    r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        return f"SLURM job {job_id}: requeue refused: {(r.stderr or r.stdout).strip()[:200]}"
    return f"SLURM job {job_id} requeued: it resumes from checkpoints/last.pt when the scheduler starts it again"
