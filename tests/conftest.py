"""Shared fixtures: a tiny demo dataset, isolated cache/runs/preset dirs, and a CLI runner.

Real NIH data is reached through $CHEXUI_NIH_SAMPLE / $CHEXUI_NIH_CSV (.ci/run sets them); tests that
need it skip with a reason when absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # test processes side by side (`pytest -n 2` on 2 cores, .ci/run): a core each, so one thread in each
    # of them and in every process they start (a run's workers too; torch reads it when it starts, hence
    # before the imports below), and OpenMP threads that wait sleep instead of spinning. With a run's two
    # threads on a core the other test process also uses, the suite took 10 % longer
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

from engine.data import demo  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def isolated_env(base: Path) -> dict[str, str]:
    """Cache, demo data and user config under the session's temp dir (CHEXUI_PRESETS is unset)."""
    return {
        "CHEXUI_CACHE_DIR": str(base / "cache"),
        "CHEXUI_DEMO_DIR": str(base / "demo-embedded"),
        "XDG_CONFIG_HOME": str(base / "xdg-config"),
        "NO_COLOR": "1",
    }


# The test files by how long they take on 2 cores (most first; measured wall seconds of a suite, noted),
# for `pytest -n 2 --dist loadfile --no-loadscope-reorder` (.ci/run): each process takes the next file when
# it is done with one, so the long ones go first and the two end together (a file left off had run last,
# alone: 16 s of one core idle at the end). test_cli.py makes the shared compressed run; test_study.py,
# which does not need it, keeps the other process busy meanwhile, and the next few files do not need it
# either. A file not listed goes last; the order changes no test's outcome.
SLOWEST_FIRST = (
    "test_cli.py",  # 148
    "test_study.py",  # 55
    "test_post_training.py",  # 113
    "test_engine.py",  # 107
    "test_faults.py",  # 95
    "test_compression.py",  # 52
    "test_fidelity.py",  # 45
    "test_hostile.py",  # 38
    "test_gpu_paths.py",  # 37
    "test_tui.py",  # 29
    "test_predict.py",  # 27
    "test_trackers.py",  # 22
    "test_channels.py",  # 15
    "test_operating.py",  # 13
    "test_data.py",  # 12
    "test_lr_find.py",  # 12
    "test_capabilities.py",  # 12
    "test_snapshots.py",  # 9
    "test_architectures.py",  # 9
)


def pytest_sessionstart(session) -> None:
    """Earlier sessions' temp dirs go now, not when this session exits (the runs write GBs; a machine that
    runs CI again and again had kept 3 sessions' worth): pytest's own cleanup, which spares the dir of a
    session still running (its lock file) and keeps this one's. In the main process only."""
    factory = session.config._tmp_path_factory
    if os.environ.get("PYTEST_XDIST_WORKER") or factory._given_basetemp is not None:
        return
    from _pytest.pathlib import LOCK_TIMEOUT, cleanup_numbered_dir

    ours = factory.getbasetemp()
    cleanup_numbered_dir(ours.parent, "pytest-", 1, ours.stat().st_mtime - LOCK_TIMEOUT)


def pytest_collection_modifyitems(items: list) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # (stable: a file's own order kept)


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    for k, v in isolated_env(tmp_path_factory.getbasetemp()).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("CHEXUI_PRESETS", raising=False)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """160 synthetic images at 32 px (about 55 patients); one copy for every test process (pytest -n), so
    that runs made by different processes have the same data root, as they would in one process."""
    with _shared(tmp_path_factory, "tiny-demo") as (path, done):
        if not done:
            demo.generate(path, n_images=160, size=32, seed=1)
        return path


@contextmanager
def _shared(tmp_path_factory, name: str) -> Iterator[tuple[Path, bool]]:
    """A directory made once per test session: by this process, or under pytest -n by the first process
    to need it while the others wait (a lock beside it); yields (path, made already)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield tmp_path_factory.mktemp(name), False
        return
    from filelock import FileLock

    path = tmp_path_factory.getbasetemp().parent / name
    with FileLock(str(path) + ".lock"):
        done = (path / ".made").is_file()
        path.mkdir(exist_ok=True)
        yield path, done
        (path / ".made").touch()


TINY_PRESET = """
name = "tiny"
extends = "demo"
description = "{desc}"
[data]
root = "{root}"
image_size = 32
workers = 0
val_fraction = 0.2
test_fraction = 0.25
[train]
epochs = {epochs}
batch_size = 16   # 6 steps an epoch (at 8, a QAT epoch took 4.8 s instead of 2.7 s)
early_stop_patience = 0
[export]
enabled = false   # export + artifact evaluation are tested where they are the subject (test_compression)
"""


@pytest.fixture()
def tiny_preset(tmp_path, tiny_demo) -> Path:
    """A seconds-long CPU run on the tiny demo set."""
    p = tmp_path / "tiny.toml"
    p.write_text(TINY_PRESET.format(desc="test run", root=tiny_demo, epochs=2))
    return p


@pytest.fixture()
def tinynet() -> Iterator[str]:
    """tests/toy.py's two-conv TinyNet registered as `tinynet` in this process's architecture table."""
    from tests.toy import registered_tinynet

    with registered_tinynet() as name:
        yield name


PRUNE70 = [
    "--set",
    "prune.enabled=true",
    "--set",
    "prune.final_sparsity=0.7",
    "--set",
    "prune.begin_epoch=0.5",
    "--set",
    "prune.end_epoch=2.0",
    "--set",
    "prune.frequency_steps=2",
    "--set",
    "train.epochs=3",
]
ADAPTIVE = "prune.adaptive=[{out_channels=64, sparsity=0.25}, {out_channels=128, sparsity=0.5}]"


def prune_schedule(**overrides) -> dict:
    """A [prune] section for Pruner unit tests: conv scope, 64-wide layers to 25 %, the rest to 70 %
    between steps 0 and 4 (cubic), updated every step."""
    from engine import config

    return {
        **config.defaults()["prune"],
        "scope": "conv",
        "adaptive": [{"out_channels": 64, "sparsity": 0.25}],
        "final_sparsity": 0.7,
        "initial_sparsity": 0.1,
        "begin_epoch": 0.0,
        "end_epoch": 1.0,
        "power": 3,
        "frequency_steps": 1,
        "adaptive_default": "final",
        **overrides,
    }


def tiny_cnn(*widths: int):
    """Conv-BN-ReLU blocks of these widths (the first at stride 1, then stride 2), pooled into a 14-logit
    head; in eval mode."""
    import torch

    layers, channels = [], 3
    for i, w in enumerate(widths):
        layers += [torch.nn.Conv2d(channels, w, 3, stride=1 if i == 0 else 2, padding=1), torch.nn.BatchNorm2d(w)]
        layers.append(torch.nn.ReLU())
        channels = w
    return torch.nn.Sequential(
        *layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 14)
    ).eval()


def run_bg(runs: Path, preset: Path, *sets: str, nproc: int = 2) -> subprocess.Popen:
    """`chexui run --headless` of a preset in the background, with `--set` items."""
    args = [a for s in sets for a in ("--set", s)]
    return chexui_bg("run", "--headless", "--preset", preset, "--nproc", nproc, "--runs-dir", runs, *args)


NO_DEPRECATED = "error::DeprecationWarning,error::FutureWarning"


@pytest.fixture(scope="session")
def compressed_run(tmp_path_factory, tiny_demo) -> tuple[Path, subprocess.CompletedProcess]:
    """One finished 2-process run with everything on - adaptive pruning (70 % elsewhere), QAT of all
    layers (PT2E; observers frozen after epoch 2 of 3), export - shared by the tests that only read a
    finished run (engine launches are the suite's main cost). Returns the run dir and the headless CLI's
    completed process."""
    # (under pytest -n the first process to need it makes it, the others wait and read it: only read here)
    with _shared(tmp_path_factory, "compressed") as (base, done):
        if not done:
            run_dir, r = _compressed_run(base, tmp_path_factory, tiny_demo)
            (base / "result.json").write_text(json.dumps([str(run_dir), r.args, r.returncode, r.stdout, r.stderr]))
        run_dir, args, code, out, err = json.loads((base / "result.json").read_text())
        return Path(run_dir), subprocess.CompletedProcess(args, code, out, err)


def _compressed_run(base: Path, tmp_path_factory, tiny_demo: Path) -> tuple[Path, subprocess.CompletedProcess]:
    preset = base / "tiny.toml"
    preset.write_text(TINY_PRESET.format(desc="test run", root=tiny_demo, epochs=3))
    # session-scoped, so set up before the function-scoped `_isolated`: the same dirs, passed explicitly
    env = {**os.environ, **isolated_env(tmp_path_factory.getbasetemp())}
    env.pop("CHEXUI_PRESETS", None)
    # deprecation and future warnings are errors in every process (PYTHONWARNINGS reaches the torchrun
    # workers): the quantization path must use nothing torch has deprecated, and hide nothing
    env["PYTHONWARNINGS"] = NO_DEPRECATED
    r = chexui(
        "run",
        "--headless",
        "--preset",
        preset,
        *PRUNE70,
        "--set",
        ADAPTIVE,
        "--set",
        "quantize.enabled=true",
        "--set",
        "quantize.scope=all",
        "--set",
        "export.enabled=true",
        "--nproc",
        2,
        "--set",
        "quantize.freeze_observers_epoch=2",
        "--runs-dir",
        base / "runs",
        env=env,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return only_run(base / "runs"), r


def run_tiny(runs: Path, preset: Path, *sets: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`chexui run --headless` of a preset with `--set` items; the CLI's result and the run's events."""
    r = chexui("run", "--headless", "--preset", preset, *[a for s in sets for a in ("--set", s)], "--runs-dir", runs)
    dirs = [d for d in runs.iterdir() if d.is_dir()] if runs.is_dir() else []
    return r, events_of(dirs[0]) if len(dirs) == 1 else []


def nih_sample() -> Path:
    p = os.environ.get("CHEXUI_NIH_SAMPLE")
    if not p or not Path(p).is_dir():
        pytest.skip("real NIH sample not available: set CHEXUI_NIH_SAMPLE to shared/data/nih-sample-64")
    return Path(p)


def nih_csv() -> Path:
    p = os.environ.get("CHEXUI_NIH_CSV")
    if not p or not Path(p).is_file():
        pytest.skip("full NIH label table not available: set CHEXUI_NIH_CSV to Data_Entry_2017_v2020.csv.gz")
    return Path(p)


def chexui(*args: str, cwd: Path | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the CLI as a user does (a subprocess), capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "chexui.cli", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kw,
    )


def chexui_bg(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chexui.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def events_of(run_dir: Path) -> list[dict]:
    from engine.events import read_events

    return read_events(run_dir / "events.jsonl")


def only_run(runs: Path) -> Path:
    dirs = [d for d in runs.iterdir() if d.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def wait_for_event(runs: Path, pred, timeout: float = 120) -> tuple[Path, dict]:
    """Poll the runs in `runs` (or the run dir `runs`) until an event satisfies pred."""
    end = time.time() + timeout
    while time.time() < end:
        if (runs / "events.jsonl").is_file():
            dirs = [runs]
        else:
            dirs = [d for d in runs.iterdir() if d.is_dir()] if runs.is_dir() else []
        for d in dirs:
            for e in events_of(d):
                if pred(e):
                    return d, e
        time.sleep(0.1)
    raise AssertionError(f"no matching event within {timeout}s in {runs}")


def dump(obj) -> str:
    return json.dumps(obj, indent=1)[:3000]


@pytest.fixture
def full_matrix(request) -> None:
    """The deep checks a session asks for with --full-matrix (minutes): skipped, with the reason, otherwise."""
    if not request.config.getoption("--full-matrix"):
        pytest.skip("every architecture's exports and int8, a real network compiled: minutes; run with --full-matrix")


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--full-matrix",
        action="store_true",
        help="test_capabilities.py: every architecture's exported files and int8 too; test_gpu_paths.py: a real "
        "network compiled under torchrun (minutes)",
    )
    parser.addoption(
        "--slurm-cluster",
        action="store_true",
        help="test_slurm_cluster.py: start a real 2-node SLURM cluster on this machine (root; minutes)",
    )
