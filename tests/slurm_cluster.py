"""A real SLURM cluster of two nodes on this machine, for tests/test_slurm_cluster.py (and by hand):

    python -m tests.slurm_cluster start DIR     # prints the SLURM_CONF to export
    python -m tests.slurm_cluster stop DIR

One munged, one slurmctld and two slurmd (`slurmd -N n1`, `-N n2`, each with its own port, spool, pid
and log file; Debian builds slurmd with multiple-slurmd support) started as root with the settings that
need no cgroups (proctrack/linuxproc, task/none, no accounting). Everything lives under DIR; the
daemons are stopped by the pids this module recorded when it started them, never by name.
Needs Debian's packages slurmctld, slurmd, slurm-client and munge, and root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

NODES = ("n1", "n2")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel")


def missing() -> str | None:
    """Why a cluster cannot start here, or None."""
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if absent:
        return f"SLURM/munge not installed ({', '.join(absent)} missing): apt-get install {' '.join(PACKAGES)}"
    if os.geteuid() != 0:
        return "the test cluster's daemons run as root"
    if not Path("/etc/munge/munge.key").is_file():
        return "/etc/munge/munge.key missing (Debian's munge package creates it)"
    return None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class Cluster:
    """The cluster under `root`; `env` is what a client (sbatch, squeue, chexui) needs."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _pid_files(self) -> list[Path]:
        return [self.root / "munge" / "munged.pid", self.root / "slurmctld.pid"] + [
            self.root / f"slurmd.{n}.pid" for n in NODES
        ]

    def write_config(self) -> None:
        ctl, *node_ports = _free_ports(1 + len(NODES))
        cpus = 1  # one CPU per node: two nodes share this 2-core machine
        lines = [
            "ClusterName=chexui-test",
            f"SlurmctldHost={socket.gethostname()}(127.0.0.1)",
            f"SlurmctldPort={ctl}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool' / '%n'}",
            f"SlurmctldPidFile={self.root / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.root / 'slurmd.%n.pid'}",
            f"SlurmctldLogFile={self.root / 'slurmctld.log'}",
            f"SlurmdLogFile={self.root / 'slurmd.%n.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "ReturnToService=2",
            "SchedulerParameters=sched_interval=1",
            "SlurmdParameters=config_overrides",
            "KillWait=30",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=60",
            "InactiveLimit=0",
            "PropagateResourceLimits=NONE",
            *(
                f"NodeName={n} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 Port={port} "
                f"CPUs={cpus} RealMemory=4000 State=UNKNOWN"
                for n, port in zip(NODES, node_ports, strict=True)
            ),
            f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 60.0) -> None:
        why = missing()
        if why:
            raise RuntimeError(why)
        for d in ("munge", "state", *(f"spool/{n}" for n in NODES)):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        self.write_config()
        m = self.root / "munge"
        subprocess.run(
            [_exe("munged"), "--force", f"--socket={self.munge_socket}", f"--pid-file={m / 'munged.pid'}",
             f"--log-file={m / 'munged.log'}", f"--seed-file={m / 'munged.seed'}"],
            check=True, env=self.env,
        )  # fmt: skip
        subprocess.run([_exe("slurmctld"), "-i"], check=True, env=self.env)  # -i: ignore old state
        for n in NODES:
            subprocess.run([_exe("slurmd"), "-N", n], check=True, env=self.env)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, env=self.env)
            states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
            if len(states) == len(NODES) and all(s == "idle" for s in states.values()):
                return
            time.sleep(0.5)
        raise RuntimeError(f"the test cluster's nodes did not come up idle within {timeout:.0f}s: {r.stdout}{r.stderr}")

    def pids(self) -> list[int]:
        """The daemons' pids, from the pid files they wrote when this cluster started them."""
        return self._pids(self._pid_files())

    @staticmethod
    def _pids(pid_files: list[Path]) -> list[int]:
        out = []
        for pid_file in pid_files:
            try:
                out.append(int(pid_file.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return out

    def stop(self) -> None:
        """Stop every daemon this cluster started, by its pid file: the slurm daemons together, then munged
        (which they talk to while they shut down); SIGKILL for any still there after 15 s."""
        munged, *slurm = self._pid_files()
        for group in (self._pids(slurm), self._pids([munged])):
            for pid in group:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 15
            while group and time.monotonic() < end:
                group = [pid for pid in group if _alive(pid)]
                time.sleep(0.1)
            for pid in group:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    verb, where = sys.argv[1], Path(sys.argv[2])
    cluster = Cluster(where)
    if verb == "start":
        cluster.start()
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        cluster.stop()
