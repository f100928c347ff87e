"""Starting and stopping the engine: the torchrun command line and the launcher process.

The launcher owns a prepared run dir (config saved, data ready): it starts torchrun in its own process
group, drains its output into logs/engine.log, and when torchrun ends without a final `run_finished`
it writes one (the engine died). Stop = the stop request (`runs.request_stop`), SIGTERM to the group,
grace period, SIGKILL. It runs inside `chexui run --headless`, or on its own in the background:

    python -m chexui.launch RUN_DIR [--nnodes N --node-rank R --rdzv-endpoint HOST:PORT]

which is what `chexui run --detach`, the TUI and sweeps start (`start_detached`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from chexui import slurm_jobs
from chexui.runs import exit_code, request_stop, write_launcher
from chexui.runstate import RunState
from engine import config, rundir
from engine.errors import StorageError
from engine.events import STOP_FILE, EventWriter, final_status, read_events
from engine.fsutil import open_append
from engine.rundir import CONFIG_FILE, EVENTS_FILE
from engine.runtime import procs

GRACE_S = 45.0


@dataclass
class NodeSpec:
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None


def gpu_count() -> int:
    """GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else NVML (nvidia-ml-py) when
    installed, else nvidia-smi, else 0. No torch import: the TUI and sweeps ask before any run."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return int(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library or no driver
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=5).stdout
            return sum(1 for line in out.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            return 0
    return 0


def free_port() -> int:
    """A free TCP port on loopback (the two-node test's rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(cfg: dict[str, Any], run_dir: Path, node: NodeSpec) -> list[str]:
    """torchrun (through engine.torchrun, which adds the loopback rendezvous) starting engine.train."""
    dcfg = cfg["distributed"]
    cmd = [
        sys.executable,
        "-m",
        "engine.torchrun",
        "--nproc-per-node",
        str(dcfg["nproc"]),
        "--max-restarts",
        str(dcfg["max_restarts"]),
    ]
    if node.nnodes > 1:
        if not node.rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT")
        cmd += [
            "--nnodes",
            str(node.nnodes),
            "--node-rank",
            str(node.node_rank),
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            node.rdzv_endpoint,
            "--rdzv-id",
            cfg.get("name", "chexui"),
        ]
    else:
        # a private store on a free port of 127.0.0.1 only: unreachable from the network
        cmd += [
            "--nnodes",
            "1",
            "--rdzv-backend",
            "loopback",
            "--rdzv-endpoint",
            "127.0.0.1:0",
            "--rdzv-id",
            run_dir.name,
        ]
    return cmd + ["-m", "engine.train", "--config", str(run_dir / CONFIG_FILE), "--run-dir", str(run_dir)]


def engine_env(single_node: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if single_node:  # the collectives' own sockets on loopback too (they listen on the host's address)
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = "lo"
    return env


class Launcher:
    """Runs torchrun for one run dir to the end. `stop()` may be called from a signal handler."""

    def __init__(
        self, cfg: dict[str, Any], run_dir: Path, node: NodeSpec | None = None, command: list[str] | None = None
    ):
        self.cfg, self.run_dir, self.node = cfg, run_dir, node or NodeSpec(nnodes=cfg["distributed"]["nnodes"])
        # what runs the engine: torchrun here (default), or a SLURM job's `srun ... torchrun ...`
        self.command = command or torchrun_command(cfg, run_dir, self.node)
        self.proc: asyncio.subprocess.Process | None = None
        self.stop_requested = False
        self.requeue = False  # a SLURM job told to make way (chexui/slurm.py): stop cleanly, then requeue
        self.slurm_job: str | None = None  # the job id when this launcher is a SLURM job's batch script
        self.returncode: int | None = None
        self.exit_code = 1  # set by finish()
        self._tail: list[str] = []
        self._events_from = 0  # byte offset of events.jsonl when this launch started
        self.log_error: str | None = None

    def request_stop(self) -> None:
        self.stop_requested = True
        request_stop(self.run_dir, f"launcher {os.getpid()}")

    async def _drain(self, stream: asyncio.StreamReader, log) -> None:
        """Copy the engine's output into engine.log. A log that cannot be written (disk full) does not
        stop the run: the output is still drained (torchrun would block on a full pipe) and the reason
        is reported at the end."""
        while line := await stream.readline():
            text = line.decode(errors="replace")
            if log is not None:
                try:
                    log.write(text)
                    log.flush()
                except OSError as e:
                    self.log_error = f"{self.run_dir / 'logs' / 'engine.log'}: cannot write ({e.strerror or e})"
                    log = None
            self._tail = (self._tail + [text.rstrip()])[-40:]

    async def _terminate(self) -> None:
        """SIGTERM to torchrun's group and every descendant, grace period, then SIGKILL."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if self.slurm_job:  # srun cancels its step on TERM: the step's processes get TERM instead, as here
            await asyncio.to_thread(slurm_jobs.signal_steps, self.slurm_job, "TERM")
            try:
                await asyncio.wait_for(self.proc.wait(), GRACE_S)
                return
            except asyncio.TimeoutError:
                pass
        try:
            family = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            family = []
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            for p in family:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            if sig == signal.SIGTERM:
                try:
                    await asyncio.wait_for(self.proc.wait(), GRACE_S)
                    psutil.wait_procs(family, timeout=5)
                    break
                except asyncio.TimeoutError:
                    continue

    async def _end_orphans(self) -> None:
        """torchrun has exited: any process of this run still alive (re-parented here) is ended."""
        try:
            left = [p for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for p in left:
                try:
                    p.send_signal(sig)
                except psutil.Error:
                    pass
            left = (await asyncio.to_thread(psutil.wait_procs, left, 5))[1]
            if not left:
                break

    async def run(self) -> int:
        """Start torchrun and wait for it. Cancellation stops the run cleanly, then re-raises."""
        cmd = self.command
        procs.become_subreaper()  # workers orphaned by a killed torchrun come back here (_end_orphans)
        (self.run_dir / STOP_FILE).unlink(missing_ok=True)
        events = self.run_dir / EVENTS_FILE
        self._events_from = events.stat().st_size if events.is_file() else 0
        try:
            log = open_append(self.run_dir / rundir.ENGINE_LOG)  # (never through a planted link)
            log.write("$ " + " ".join(cmd) + "\n")
        except (OSError, StorageError) as e:
            log, self.log_error = (
                None,
                f"{self.run_dir / 'logs' / 'engine.log'}: cannot write ({getattr(e, 'strerror', None) or e})",
            )
        self.proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env=engine_env(self.node.nnodes == 1),
            start_new_session=True,
            preexec_fn=procs.die_with_parent,
        )
        assert self.proc.stdout is not None  # (stdout=PIPE)
        drain = asyncio.create_task(self._drain(self.proc.stdout, log))
        try:
            self.returncode = await self.proc.wait()
            await self._end_orphans()  # they would also hold the output pipe open
            await drain
        except asyncio.CancelledError:
            self.request_stop()
            await self._terminate()
            drain.cancel()
            self.finish()
            raise
        finally:
            if log is not None:
                try:
                    log.close()
                except OSError:
                    pass
        return self.finish()

    def finish(self) -> int:
        """Write the final event when the engine could not; return the chexui exit code (0 completed or
        stopped, 2 when the engine's error says the user can fix it, else 1). Only events written since
        this launch count: a resume that dies before its first event has failed, whatever came before."""
        path = self.run_dir / EVENTS_FILE
        try:
            events = read_events(path, start=self._events_from)
        except StorageError as e:
            events, self.log_error = [], str(e)
        status = final_status(events)
        if status is None and not events and self.returncode == 0 and self.node.nnodes > 1:
            self.exit_code = 0  # global rank 0 (the event writer) ran on another node; this node's part succeeded
            return 0
        if status is None and (events or self.node.node_rank == 0):
            status = "stopped" if self.stop_requested else "failed"
            try:
                w = EventWriter(path)
                if status == "failed":
                    last = next((line for line in reversed(self._tail) if line.strip()), "")
                    w.emit(
                        "error",
                        message=f"engine exited with code {self.returncode} before finishing"
                        + (f": {last}" if last else "")
                        + f" (see {self.run_dir / 'logs' / 'engine.log'})",
                    )
                st = RunState.fold(read_events(path))
                w.emit(
                    "run_finished",
                    status=status,
                    epochs=st.epochs[-1]["epoch"] if st.epochs else 0,
                    total_time_s=st.duration_s or 0.0,
                    best_epoch=0,
                    test_auc_mean=None,
                )
                w.close()
            except (OSError, StorageError) as e:
                self.log_error = f"{path}: cannot write the final status ({getattr(e, 'strerror', None) or e})"
        (self.run_dir / STOP_FILE).unlink(missing_ok=True)
        self.exit_code = exit_code(status or "failed", events)
        if self.exit_code == 1 and self.returncode == 2:  # the engine said why before it could write events
            self.exit_code = 2
        return self.exit_code


async def run_to_end(launcher: Launcher, poll=None, interval: float = 0.2) -> int:
    """Run the launcher to its end; SIGINT, SIGTERM and SIGHUP stop the run cleanly (checkpoint kept).
    `poll()` is called every `interval` seconds while it runs, and once at the end."""
    task = asyncio.ensure_future(launcher.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)

    def make_way() -> None:  # SLURM's warning before a time limit or a preemption (slurm.py: REQUEUE_SIGNAL)
        launcher.requeue = True
        task.cancel()

    if launcher.slurm_job:
        loop.add_signal_handler(signal.SIGUSR1, make_way)
    try:
        while not task.done():
            if poll:
                poll()
            await asyncio.wait({task}, timeout=interval)  # (back at once when the run ends)
        await task
    except asyncio.CancelledError:
        pass  # stopped by a signal: the launcher has stopped the run and written its final status
    if poll:
        poll()
    return launcher.exit_code


def start_detached(
    run_dir: Path, runs_dir: Path, node: NodeSpec | None = None, env: dict[str, str] | None = None
) -> int:
    """Start the launcher for a prepared run dir in its own session (survives the terminal); its pid.
    `env` adds variables (a sweep gives each run slot its own CUDA_VISIBLE_DEVICES)."""
    import subprocess

    node = node or NodeSpec()
    cmd = [sys.executable, "-m", "chexui.launch", str(run_dir.resolve())]
    if node.nnodes > 1:
        cmd += [
            "--nnodes",
            str(node.nnodes),
            "--node-rank",
            str(node.node_rank),
            "--rdzv-endpoint",
            str(node.rdzv_endpoint),
        ]
    with open_append(run_dir / rundir.LAUNCHER_LOG) as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
            cwd=Path(__file__).resolve().parent.parent,
        )
    write_launcher(run_dir, proc.pid)
    return proc.pid


def save_config(cfg: dict[str, Any], run_dir: Path) -> None:
    config.save(cfg, run_dir / CONFIG_FILE)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from chexui.headless import HeadlessView
    from engine.errors import UserError
    from engine.events import EventTail

    ap = argparse.ArgumentParser(
        prog="chexui.launch",
        description="Run the engine for a prepared run dir "
        "to its end (what `chexui run --detach`, the TUI and sweeps start).",
    )
    ap.add_argument("run_dir")
    ap.add_argument("--nnodes", type=int, default=1)
    ap.add_argument("--node-rank", type=int, default=0)
    ap.add_argument("--rdzv-endpoint", default=None)
    ap.add_argument(
        "--slurm-job",
        action="store_true",
        help="run the command after -- (the job's srun line) as this run's SLURM batch job (chexui/slurm.py)",
    )
    argv = sys.argv[1:] if argv is None else argv
    command = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = ap.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if bool(command) != args.slurm_job:
        ap.error("a command after -- goes with --slurm-job, and only with it")
    run_dir = Path(args.run_dir)
    try:
        cfg = rundir.load_config(run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_launcher(run_dir)
    view, tail = HeadlessView(plain=True), EventTail(run_dir / EVENTS_FILE)
    node = NodeSpec(args.nnodes, args.node_rank, args.rdzv_endpoint)
    if args.slurm_job:
        node = NodeSpec(nnodes=cfg["distributed"]["nnodes"])
    launcher = Launcher(cfg, run_dir, node, command or None)
    if args.slurm_job:
        launcher.slurm_job = os.environ.get("SLURM_JOB_ID") or None
    code = asyncio.run(run_to_end(launcher, lambda: view.handle_all(tail.poll()), interval=1.0))
    if launcher.log_error:
        view.say(f"warning: {launcher.log_error}")
    if launcher.requeue and final_status(read_events(run_dir / EVENTS_FILE)) == "stopped":  # (not completed)
        view.say(slurm_jobs.requeue_self())
    return code


if __name__ == "__main__":
    sys.exit(main())
