"""`chexui run --slurm` under a real SLURM: a slurmctld and two slurmd on this machine (tests/slurm_cluster.py),
started by the fixture and stopped by their pids. Needs root and Debian's slurmctld, slurmd, slurm-client
and munge, and `--slurm-cluster` (.ci/run installs the packages and runs this file in a step of its own).

A 2-node job's test AUROC equals a 1-node 2-process run's; `chexui watch` follows a job through the
scheduler's states; SLURM's warning before a time limit (USR1 to the batch script) checkpoints the run,
requeues the job, and the job resumes and completes; `chexui stop` ends a running job "stopped" with a
checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psutil
import pytest

from engine.events import final_status
from tests.conftest import chexui, chexui_bg, events_of, only_run, wait_for_event
from tests.slurm_cluster import Cluster, missing

pytestmark = pytest.mark.slow
# the 2-node run's arithmetic as the 1-node 2-process run's: torchrun gives each of its processes one
# thread when it starts several on a node, and all the node's cores when it starts one
ONE_THREAD = 'slurm.env=["OMP_NUM_THREADS=1"]'


@pytest.fixture(scope="module")
def cluster(request, tmp_path_factory):
    if not request.config.getoption("--slurm-cluster"):
        pytest.skip("a real SLURM cluster on this machine: run with --slurm-cluster (.ci/run does)")
    why = missing()
    if why:
        pytest.skip(why)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(c.conf)
    try:
        c.start()
        yield c
    finally:
        pids = c.pids()
        c.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    assert not [p for p in pids if psutil.pid_exists(p)], "a daemon of the test cluster outlived its stop"


def submit(runs, preset, *sets: str) -> tuple[str, str]:
    """`chexui run --slurm` of the preset: the run's id and the job's id."""
    args = [a for s in ("slurm.cpus_per_task=1", *sets) for a in ("--set", s)]
    r = chexui("run", "--preset", preset, "--slurm", *args, "--runs-dir", runs)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = only_run(runs)
    (sub,) = [e for e in events_of(run_dir) if e["type"] == "slurm_submitted"]
    return run_dir.name, sub["job_id"]


def job_state(job: str) -> tuple[str, str]:
    out = subprocess.run(["squeue", "-h", "--states=all", "-j", job, "-o", "%T %r"], capture_output=True, text=True)
    state, _, reason = out.stdout.strip().partition(" ")
    return state, reason


def wait_state(job: str, *states: str, timeout: float = 120) -> tuple[str, str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = job_state(job)
        if got[0] in states:
            return got
        time.sleep(0.5)
    raise AssertionError(f"SLURM job {job} not in {states} within {timeout}s: {job_state(job)}")


def wait_idle(runs, timeout: float = 90) -> None:
    """Until no process of the runs dir is left and every node of the cluster is idle."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True).stdout.split()
        if not left_running(runs) and nodes and all(n == "idle" for n in nodes):
            return
        time.sleep(0.5)
    raise AssertionError(f"not idle within {timeout}s: {left_running(runs)}")


def left_running(runs) -> list[str]:
    """Processes whose command line names the runs dir (the launcher, srun, torchrun, the workers)."""
    cmds = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    return [c for c in cmds if str(runs) in c]


def test_a_two_node_job_is_the_one_node_two_process_run_and_watch_follows_it(cluster, tmp_path, tiny_preset):
    runs, local = tmp_path / "runs", tmp_path / "local"
    run_id, job = submit(runs, tiny_preset, "slurm.nodes=2", ONE_THREAD)
    ref = chexui_bg("run", "--headless", "--preset", tiny_preset, "--nproc", 2, "--runs-dir", local)
    watch = chexui("watch", run_id, "--headless", "--runs-dir", runs, timeout=300)
    ref_out, _ = ref.communicate(timeout=300)
    assert watch.returncode == 0 and ref.returncode == 0, watch.stdout + watch.stderr + ref_out
    # the scheduler's states as watch saw them, then the engine's events to the end
    assert f"SLURM job {job}: RUNNING on n[1-2]" in watch.stdout and f"SLURM job {job}: COMPLETED" in watch.stdout
    assert "run completed" in watch.stdout
    ev, ref_ev = events_of(runs / run_id), events_of(only_run(local))
    started = next(e for e in ev if e["type"] == "run_started")
    assert (started["world_size"], started["nnodes"]) == (2, 2)
    losses = [[e["train_loss"], e["val_loss"]] for e in ev if e["type"] == "epoch_ended"]
    assert losses == [[e["train_loss"], e["val_loss"]] for e in ref_ev if e["type"] == "epoch_ended"]
    test_auc = [e["test_auc_mean"] for e in ev + ref_ev if e["type"] == "run_finished"]
    assert len(test_auc) == 2 and test_auc[0] == test_auc[1], test_auc
    (row,) = json.loads(chexui("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert (row["status"], row["slurm_job"], row["slurm_state"]) == ("completed", job, "COMPLETED")
    assert not left_running(runs)


def test_the_time_limit_warning_checkpoints_requeues_and_the_job_resumes_to_the_end(cluster, tmp_path, tiny_preset):
    runs = tmp_path / "runs"
    run_id, job = submit(runs, tiny_preset, "slurm.nodes=2", ONE_THREAD, "train.epochs=3", "slurm.signal_s=60")
    script = (runs / run_id / "slurm.sbatch").read_text()
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@60" in script
    wait_for_event(runs, lambda e: e["type"] == "epoch_ended" and e["epoch"] == 1)
    # what SLURM sends 60 s before the job's time limit (or a preemption): USR1 to the batch script
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    state, reason = wait_state(job, "PENDING")
    requeued = time.monotonic()
    assert reason == "BeginTime"  # requeued; SLURM holds a requeued job two minutes: not in a test
    wait_idle(runs)  # (what those two minutes give: the first start's processes gone, the nodes free,
    # and the first allocation's credential, revoked at the requeue, in the past: started again within
    # the same second, slurmctld killed the job, "Job credential revoked", FAILED NonZeroExitCode)
    time.sleep(max(0.0, requeued + 2.0 - time.monotonic()))
    ev = events_of(runs / run_id)
    assert final_status(ev) == "stopped" and ev[-2]["type"] == "checkpoint_saved"  # (then run_finished)
    assert chexui("runs", "list", "--json", "--runs-dir", runs).stdout.count('"status": "pending"') == 1
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    end_state = wait_state(job, "COMPLETED", "FAILED", timeout=240)
    ev = events_of(runs / run_id)
    restarts = [e for e in ev if e["type"] == "restarted"]
    out = "".join(p.read_text() for p in (runs / run_id / "logs").glob("slurm-*.out"))
    assert len(restarts) == 1, f"{end_state}: {[e['type'] for e in ev if e['type'] != 'progress']}\n{out[-3000:]}"
    (restarted,) = restarts
    assert restarted["attempt"] == 1 and restarted["resumed_epoch"] >= 1
    assert [e["epoch"] for e in ev if e["type"] == "epoch_ended"][-1] == 3
    assert final_status(ev) == "completed" and not left_running(runs)


def test_chexui_stop_ends_a_running_job_stopped_with_a_checkpoint(cluster, tmp_path, tiny_preset):
    runs = tmp_path / "runs"
    run_id, job = submit(runs, tiny_preset, "distributed.nproc=2", "train.epochs=30")
    wait_for_event(runs, lambda e: e["type"] == "epoch_ended" and e["epoch"] == 1)
    r = chexui("stop", run_id, "--runs-dir", runs)
    assert r.returncode == 0 and f"{run_id}: stopped" in r.stdout, r.stdout + r.stderr
    state, _ = job_state(job)
    assert state not in ("RUNNING", "PENDING", "COMPLETING")
    ev = events_of(runs / run_id)
    assert final_status(ev) == "stopped" and (runs / run_id / "checkpoints" / "last.pt").is_file()
    assert [e for e in ev if e["type"] == "checkpoint_saved"][-1]["epoch"] >= 1
    assert not left_running(runs)
    # a stop of a job that is no longer running says so
    r = chexui("stop", run_id, "--runs-dir", runs)
    assert r.returncode == 2 and "is not running" in r.stdout + r.stderr
