"""`chexui run --slurm`: the sbatch script a preset's [slurm] section makes, its submission (a stand-in
`sbatch` on PATH: no scheduler runs here), and a shared preset that cannot make the script run anything."""

from __future__ import annotations

import json
import os
import re

import pytest

from engine.events import EVENTS_FILE
from tests.test_hostile import in_process

FAKE_SBATCH = """#!/bin/sh
# a stand-in for SLURM's sbatch: records its arguments and accepts the job as 4242
echo "$@" > "$(dirname "$0")/sbatch-args"
echo "4242"
"""


def stand_ins(tmp_path, monkeypatch, **scripts: str):
    """Stand-in SLURM commands (name=script text) first on PATH; their dir."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_dry_run_prints_a_script_with_one_task_per_node_and_makes_nothing(tmp_path, tiny_preset):
    runs = tmp_path / "runs"
    sets = ["--set", "slurm.nodes=2", "--set", "slurm.gpus_per_node=2", "--set", "distributed.nproc=2"]
    sets += ["--set", 'slurm.modules=["cuda/12.4"]', "--set", 'slurm.env=["NCCL_DEBUG=INFO"]']
    r = in_process("run", "--preset", tiny_preset, "--slurm", "--dry-run", *sets, "--runs-dir", runs)
    assert r.returncode == 0, r.stdout
    script = r.stdout
    assert script.startswith("#!/bin/bash\n") and not runs.exists()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=2"):
        assert line in script.splitlines()
    assert "module load cuda/12.4" in script and "export NCCL_DEBUG=INFO" in script
    # (the batch script is chexui's launcher, which runs the srun line: a requeue and a stop go through it)
    assert "#SBATCH --requeue" in script and "#SBATCH --signal=B:USR1@300" in script
    assert re.search(r"^exec \S+ -m chexui.launch \S+ --slurm-job -- \\$", script, re.M)
    srun = next(line.strip() for line in script.splitlines() if line.strip().startswith("srun "))
    assert "--nodes=2 --ntasks-per-node=1" in srun and "PET_NODE_RANK=$SLURM_NODEID" in srun
    torchrun = script.splitlines()[-1]
    assert "-m engine.torchrun --nproc-per-node 2" in torchrun and "--nnodes 2 --rdzv-backend c10d" in torchrun
    assert "--node-rank" not in torchrun and 'PET_RDZV_ENDPOINT="${head_addr:-$head}:29500"' in script
    # one node: torchrun's loopback rendezvous, as on one machine
    r = in_process("run", "--preset", tiny_preset, "--slurm", "--dry-run", "--runs-dir", runs)
    assert "--rdzv-backend loopback" in r.stdout and "PET_RDZV_ENDPOINT" not in r.stdout


def test_submission_records_the_job_and_keeps_the_script(tmp_path, tiny_preset, monkeypatch):
    bin_dir = stand_ins(tmp_path, monkeypatch, sbatch=FAKE_SBATCH)
    runs = tmp_path / "runs"
    r = in_process("run", "--preset", tiny_preset, "--slurm", "--set", "slurm.nodes=2", "--runs-dir", runs)
    assert r.returncode == 0, r.stdout
    (run_dir,) = runs.iterdir()
    assert re.search(rf"run {run_dir.name}: SLURM job 4242 \(2 node", r.stdout)
    assert (bin_dir / "sbatch-args").read_text().split() == ["--parsable", str(run_dir / "slurm.sbatch")]
    assert "#SBATCH --nodes=2" in (run_dir / "slurm.sbatch").read_text()
    (event,) = [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]
    assert (event["type"], event["job_id"], event["nodes"]) == ("slurm_submitted", "4242", 2)
    assert "nnodes = 2" in (run_dir / "config.toml").read_text()
    listed = in_process("runs", "list", "--json", "--runs-dir", runs)
    assert [r["status"] for r in json.loads(listed.stdout)] == ["submitted"]  # (not "failed": no launcher here)


@pytest.mark.parametrize(
    "value",
    [
        'slurm.sbatch=["--output=/home/someone/.bashrc"]',  # writes a file
        'slurm.sbatch=["--wrap=id"]',  # runs a command
        'slurm.modules=["/tmp/planted.lua"]',  # loads a module file from a path
        'slurm.env=["LD_PRELOAD=/tmp/x.so"]',  # loads code into every process
        'slurm.env=["NCCL_NET_PLUGIN=x"]',
        "slurm.partition=gpu;id",
        "slurm.time=$(id)",
    ],
)
def test_a_preset_cannot_make_the_script_run_anything(tmp_path, tiny_preset, value):
    r = in_process("run", "--preset", tiny_preset, "--slurm", "--dry-run", "--set", value)
    key = value.split("=", 1)[0]
    assert r.returncode == 2 and f"key '{key}'" in r.stdout + r.stderr and "#!/bin/bash" not in r.stdout


FAKE_SQUEUE = """#!/bin/sh
# a stand-in for squeue: job 4242 in the state and with the batch script the test wrote beside it
d="$(dirname "$0")"
printf '4242\\t%s\\tNone\\tn1\\t%s\\t%s\\n' "$(cat "$d/state")" "$(id -u)" "$(cat "$d/command")"
"""
FAKE_SCANCEL = """#!/bin/sh
# a stand-in for scancel: records its arguments; the job ends
d="$(dirname "$0")"
echo "$@" >> "$d/scancel-args"
echo CANCELLED > "$d/state"
"""


def test_runs_list_and_stop_trust_only_a_job_running_the_runs_own_script(tmp_path, tiny_preset, monkeypatch):
    """The job id in a run dir's events may have been planted: `runs list` shows a job's state, and
    `chexui stop` signals it, only when the scheduler says the job runs that run dir's slurm.sbatch."""
    bin_dir = stand_ins(tmp_path, monkeypatch, sbatch=FAKE_SBATCH, squeue=FAKE_SQUEUE, scancel=FAKE_SCANCEL)
    runs = tmp_path / "runs"
    assert in_process("run", "--preset", tiny_preset, "--slurm", "--runs-dir", runs).returncode == 0
    (run_dir,) = runs.iterdir()
    (bin_dir / "state").write_text("RUNNING\n")
    # job 4242 is someone else's script (another run of yours, say): not this run's
    (bin_dir / "command").write_text(str(tmp_path / "other" / "slurm.sbatch"))
    (row,) = json.loads(in_process("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert (row["status"], row["slurm_job"], row["slurm_state"]) == ("submitted", "4242", None)
    r = in_process("stop", run_dir.name, "--runs-dir", runs)
    assert r.returncode == 2 and "does not know it as this run's job" in r.stdout + r.stderr
    assert not (bin_dir / "scancel-args").exists()
    # the run's own job: listed with the scheduler's state; stop = TERM to the batch script, then scancel
    (bin_dir / "command").write_text(str(run_dir / "slurm.sbatch"))
    (row,) = json.loads(in_process("runs", "list", "--json", "--runs-dir", runs).stdout)
    assert (row["status"], row["slurm_state"]) == ("running", "RUNNING")
    (bin_dir / "state").write_text("PENDING\n")
    assert json.loads(in_process("runs", "list", "--json", "--runs-dir", runs).stdout)[0]["status"] == "pending"
    (bin_dir / "state").write_text("RUNNING\n")
    r = in_process("stop", run_dir.name, "--runs-dir", runs, "--timeout", "10")
    assert r.returncode == 0, r.stdout
    assert (bin_dir / "scancel-args").read_text().splitlines()[0] == "--batch --signal=TERM 4242"
    assert (run_dir / "stop_requested").is_file()  # (what the engine reads when TERM comes: checkpoint, stop)
