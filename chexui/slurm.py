"""A run as a SLURM job (`chexui run --slurm`, the launcher's Submit to SLURM): its sbatch script and its
submission. What the scheduler says of the job and the signals to it: chexui/slurm_jobs.py.

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

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chexui.slurm_jobs import SCRIPT
from engine.errors import UserError
from engine.rundir import CONFIG_FILE

REQUEUE_SIGNAL = "USR1"  # the launcher's "make way" (chexui/launch.py: run_to_end)
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
    from chexui.runs import check_new_run, new_run_dir
    from engine.events import EventWriter
    from engine.fsutil import write_atomic
    from engine.rundir import EVENTS_FILE

    check_gpus(cfg)
    if shutil.which("sbatch") is None:
        raise UserError("--slurm: sbatch not found on PATH (run on a SLURM login node, or --dry-run to see the script)")
    cfg = {**cfg, "distributed": {**cfg["distributed"], "nnodes": cfg["slurm"]["nodes"]}}
    check_new_run(base, name)
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
