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
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert "--nodes=2 --ntasks-per-node=1" in srun and "PET_NODE_RANK=$SLURM_NODEID" in srun
    torchrun = script.splitlines()[-1]
    assert "-m engine.torchrun --nproc-per-node 2" in torchrun and "--nnodes 2 --rdzv-backend c10d" in torchrun
    assert "--node-rank" not in torchrun and 'PET_RDZV_ENDPOINT="${head_addr:-$head}:29500"' in script
    # one node: torchrun's loopback rendezvous, as on one machine
    r = in_process("run", "--preset", tiny_preset, "--slurm", "--dry-run", "--runs-dir", runs)
    assert "--rdzv-backend loopback" in r.stdout and "PET_RDZV_ENDPOINT" not in r.stdout


def test_submission_records_the_job_and_keeps_the_script(tmp_path, tiny_preset, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
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
