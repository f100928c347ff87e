"""The CLI as a user drives it: presets, detach/watch/stop, runs list/show, resume, eval, multi-node."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from engine.events import final_status
from engine.labels import LABELS
from tests.conftest import TINY_PRESET, chexui, chexui_bg, events_of, nih_sample, only_run, wait_for_event


def leftover(runs: Path) -> list[psutil.Process]:
    """Processes still running for anything under `runs` (launchers, torchrun, workers)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(runs) in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_import_cli_does_not_import_torch():
    code = "import sys, chexui.cli; bad = [m for m in ('torch', 'textual', 'pandas') if m in sys.modules]; print(bad)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_every_command_has_help():
    """Every command and group the app has (read from the app itself, so a new one is covered) prints
    its usage; the list holds at least the commands the README names."""
    import typer.main
    from typer.testing import CliRunner

    from chexui.cli import app

    def paths(cmd, path):
        yield path
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from paths(sub, [*path, name])

    found = list(paths(typer.main.get_command(app), []))
    assert {" ".join(p) for p in found} >= {
        "",
        "run",
        "compress",
        "watch",
        "stop",
        "runs",
        "runs list",
        "runs show",
        "eval",
        "predict",
        "explain",
        "bench",
        "sweep",
        "compare",
        "report",
        "presets",
        "presets list",
        "presets show",
        "presets validate",
        "data",
        "data demo",
        "data check",
        "data prepare",
    }
    runner = CliRunner()
    for cmd in found:
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, (cmd, r.output)


@pytest.mark.slow
def test_builtin_presets_listed_and_valid():
    r = chexui("presets", "list", "--json")
    assert r.returncode == 0
    items = {p["name"]: p for p in json.loads(r.stdout)}
    assert {"demo", "densenet121", "resnet50"} <= set(items)
    assert all(items[n]["source"] == "builtin" for n in ("demo", "densenet121", "resnet50"))
    for name in ("demo", "densenet121", "resnet50"):
        assert chexui("presets", "validate", items[name]["path"]).returncode == 0
    shown = chexui("presets", "show", "densenet121")
    assert shown.returncode == 0 and 'arch = "densenet121"' in shown.stdout and "min_lr = 1e-07" in shown.stdout
    import tomllib

    r50 = tomllib.loads(chexui("presets", "show", "resnet50").stdout)
    assert (r50["train"]["batch_size"], r50["train"]["lr"], r50["train"]["min_lr"]) == (64, 0.001, 1e-5)


@pytest.mark.slow
def test_shared_preset_dir_listed_and_runs_by_name(tmp_path, tiny_demo, monkeypatch):
    shared = tmp_path / "lab-presets"
    shared.mkdir()
    (shared / "lab-tiny.toml").write_text(TINY_PRESET.format(desc="our lab's tiny run", root=tiny_demo, epochs=1))
    monkeypatch.setenv("CHEXUI_PRESETS", f"{tmp_path / 'nowhere'}:{shared}")
    items = {p["name"]: p for p in json.loads(chexui("presets", "list", "--json").stdout)}
    assert items["lab-tiny"]["source"] == "env" and items["lab-tiny"]["path"] == str(shared / "lab-tiny.toml")
    assert items["lab-tiny"]["description"] == "our lab's tiny run"
    table = chexui("presets", "list").stdout
    assert "lab-tiny" in table and str(shared) in table
    # a user preset (XDG config dir) is found too, after the shared dirs
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "chexui" / "presets"
    user.mkdir(parents=True, exist_ok=True)
    (user / "mine.toml").write_text('extends = "lab-tiny"\n[train]\nlr = 0.01\n')
    items = {p["name"]: p for p in json.loads(chexui("presets", "list", "--json").stdout)}
    assert items["mine"]["source"] == "user"
    assert "lr = 0.01" in chexui("presets", "show", "mine").stdout
    runs = tmp_path / "runs"
    r = chexui("run", "--preset", "lab-tiny", "--headless", "--runs-dir", runs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert final_status(events_of(only_run(runs))) == "completed"


@pytest.mark.parametrize(
    "body, needles",
    [
        ("[train]\nbacth_size = 16\n", ["train.bacth_size", "did you mean 'batch_size'"]),
        ("[train]\nlearning_rate = 0.1\n", ["train.learning_rate", "allowed:", "lr"]),
        ('[train]\nbatch_size = "big"\n', ["train.batch_size", "expected an integer"]),
        ("[train]\nlr = -1.0\n", ["train.lr", "> 0"]),
        ("[data]\nhflip = 1.5\n", ["data.hflip", "<= 1"]),
        ('[model]\narch = "vgg16"\n', ["model.arch", "densenet121"]),
        ("[trian]\nlr = 0.1\n", ["trian", "did you mean 'train'"]),
        ('extends = "no-such-preset"\n', ["no-such-preset", "not found"]),
        ("[train\nlr = 1\n", ["not valid TOML"]),
    ],
)
def test_bad_preset_exits_2_naming_file_and_key(tmp_path, body, needles):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    for args in (["presets", "validate", p], ["run", "--preset", p, "--headless", "--runs-dir", tmp_path / "runs"]):
        r = chexui(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        line = r.stderr.strip()
        assert str(p) in line or "no-such-preset" in line, line
        for n in needles:
            assert n in line, line
    assert not (tmp_path / "runs").exists(), "a bad config must not create a run"


def test_extends_loop_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "a.toml").write_text('extends = "b"\n')
    (tmp_path / "b.toml").write_text('extends = "a"\n')
    monkeypatch.setenv("CHEXUI_PRESETS", str(tmp_path))
    r = chexui("presets", "show", "a")
    assert r.returncode == 2 and "loops" in r.stderr


def _status(runs: Path, run_id: str) -> str:
    rows = json.loads(chexui("runs", "list", "--json", "--runs-dir", runs).stdout)
    return {r["id"]: r for r in rows}[run_id]["status"]


def detached_long_run(runs: Path, preset: Path) -> tuple[str, str]:
    """A 30-epoch run started with --detach, once its first epoch has ended: (run id, CLI output)."""
    r = chexui("run", "--detach", "--preset", preset, "--set", "train.epochs=30", "--runs-dir", runs)
    assert r.returncode == 0, r.stderr
    wait_for_event(runs, lambda e: e["type"] == "epoch_ended")
    return only_run(runs).name, r.stdout


@pytest.mark.slow
def test_detach_watch_stop_resume(tmp_path, tiny_preset):
    runs = tmp_path / "runs"
    run_id, out = detached_long_run(runs, tiny_preset)
    assert run_id in out and "chexui watch" in out
    assert _status(runs, run_id) == "running"
    watcher = chexui_bg("watch", run_id, "--headless", "--runs-dir", runs)
    r = chexui("stop", run_id, "--runs-dir", runs)
    assert r.returncode == 0 and "stopped" in r.stdout, r.stdout + r.stderr
    out, _ = watcher.communicate(timeout=60)
    assert "run stopped" in out and "epoch 1:" in out
    assert _status(runs, run_id) == "stopped"
    time.sleep(0.5)
    assert leftover(runs) == []
    assert (runs / run_id / "checkpoints" / "last.pt").is_file()
    # resume with fewer epochs so that it ends soon
    r = chexui("run", "--resume", run_id, "--headless", "--set", "train.epochs=2", "--runs-dir", runs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _status(runs, run_id) == "completed"
    shown = json.loads(chexui("runs", "show", run_id, "--json", "--runs-dir", runs).stdout)
    assert shown["epochs"] == 2 and shown["test_auc"] is not None and len(shown["evaluations"][-1]["auc"]) == 14
    # watch on a finished run replays it and exits 0
    r = chexui("watch", run_id, "--headless", "--runs-dir", runs)
    assert r.returncode == 0 and "run completed" in r.stdout and "test AUROC" in r.stdout


@pytest.mark.slow
def test_killed_launcher_shows_failed_and_resume_completes(tmp_path, tiny_preset):
    runs = tmp_path / "runs"
    run_id, _ = detached_long_run(runs, tiny_preset)
    launcher = json.loads((runs / run_id / "launcher.json").read_text())["pid"]
    os.kill(launcher, signal.SIGKILL)
    end = time.time() + 60
    while leftover(runs) and time.time() < end:
        time.sleep(0.2)
    assert leftover(runs) == [], "torchrun and its workers must die with their launcher"
    assert _status(runs, run_id) == "failed"
    r = chexui("run", "--resume", run_id, "--headless", "--set", "train.epochs=2", "--runs-dir", runs)
    assert r.returncode == 0, r.stdout + r.stderr
    assert _status(runs, run_id) == "completed"


@pytest.mark.slow
def test_two_nodes_on_localhost(tmp_path, tiny_preset):
    from chexui.launch import free_port

    endpoint = f"127.0.0.1:{free_port()}"
    args = [
        "run",
        "--headless",
        "--preset",
        tiny_preset,
        "--set",
        "train.epochs=1",
        "--nnodes",
        2,
        "--rdzv-endpoint",
        endpoint,
        "--name",
        "two-nodes",
    ]
    # two "nodes" on one 2-core machine: one CPU thread each (two two-thread pools on two cores thrash)
    one = {**os.environ, "OMP_NUM_THREADS": "1"}
    node0 = chexui_bg(*args, "--node-rank", 0, "--runs-dir", tmp_path / "node0", env=one)
    node1 = chexui_bg(*args, "--node-rank", 1, "--runs-dir", tmp_path / "node1", env=one)
    out0, _ = node0.communicate(timeout=240)
    out1, _ = node1.communicate(timeout=60)
    assert node0.returncode == 0 and node1.returncode == 0, out0[-2000:] + out1[-2000:]
    # exactly one node (the one holding global rank 0) wrote the event stream
    written = [d for d in (tmp_path / "node0", tmp_path / "node1") if events_of(only_run(d))]
    assert len(written) == 1
    ev = events_of(only_run(written[0]))
    started = [e for e in ev if e["type"] == "run_started"][0]
    assert started["world_size"] == 2 and started["nnodes"] == 2
    assert final_status(ev) == "completed"


@pytest.fixture()
def trained(compressed_run) -> tuple[Path, str]:
    """A finished run (the session's shared one, see conftest): (runs dir, run id)."""
    run, _ = compressed_run
    return run.parent, run.name


@pytest.mark.slow
def test_eval_on_real_nih_sample(tmp_path, trained):
    root = nih_sample()
    runs, run_id = trained
    r = chexui("eval", run_id, "--data", root, "--split", "all", "--json", "--runs-dir", runs)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert list(res["auc"]) == list(LABELS) and res["n"] == 434
    assert res["auc_mean"] is not None and 0 <= res["auc_mean"] <= 1
    # the calls at the run's own thresholds (chosen on its validation split), on other data
    op = next(e for e in events_of(runs / run_id) if e["type"] == "operating_points")
    assert res["operating_point"] == "youden" and set(res["at_threshold"]) == set(LABELS)
    assert all(v is None or v["threshold"] == op["thresholds"][k] for k, v in res["at_threshold"].items())
    r = chexui("eval", run_id, "--data", tmp_path / "missing", "--runs-dir", runs)
    assert r.returncode == 2 and "missing" in r.stderr


@pytest.mark.slow
def test_runs_list_and_show_human(trained):
    runs, run_id = trained
    r = chexui("runs", "list", "--runs-dir", runs)
    assert r.returncode == 0 and run_id in r.stdout and "completed" in r.stdout
    r = chexui("runs", "show", run_id, "--runs-dir", runs)
    assert r.returncode == 0 and "epoch 1:" in r.stdout and "Hernia" in r.stdout
    r = chexui("runs", "show", "no-such-run", "--runs-dir", runs)
    assert r.returncode == 2 and "not found" in r.stderr
    r = chexui("stop", run_id, "--runs-dir", runs)
    assert r.returncode == 2 and "not running" in r.stderr
