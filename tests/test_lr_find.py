"""`chexui lr-find`: the LR range test's suggestion rules, a real 2-process test with `--apply`, and the
launcher's Find LR (fed a recorded test: tests/data/events/lr_find.jsonl)."""

from __future__ import annotations

import asyncio
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from chexui.headless import lr_suggestion_text
from engine.training.lr_find import Ema, ramp, suggest
from tests.conftest import chexui, events_of, only_run
from tests.test_tui import until

RECORDED = Path(__file__).parent / "data" / "events" / "lr_find.jsonl"


def curve(lrs: np.ndarray, fall_at: float, blow_at: float) -> np.ndarray:
    """A range test's loss: flat, a fall centred on `fall_at` (steepest there), a rise after `blow_at`."""
    x = np.log10(lrs)
    return 1.0 - 0.6 / (1 + np.exp(-4 * (x - math.log10(fall_at)))) + np.exp(3 * (x - math.log10(blow_at)))


def test_the_rules_find_the_steepest_fall_and_a_tenth_of_the_minimum():
    lrs = ramp(1e-6, 1.0, 200)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log(lrs)), np.log(1e6) / 199)  # evenly spaced in log LR
    loss = curve(lrs, fall_at=1e-3, blow_at=0.3)
    steep = suggest(lrs, loss, "steepest")
    assert steep.lr == steep.steepest_lr and 10**-3.1 < steep.lr < 10**-2.9
    tenth = suggest(lrs, loss, "min/10")
    assert tenth.lr == pytest.approx(tenth.min_loss_lr / 10) and tenth.min_loss_lr == lrs[np.argmin(loss)]
    # single-batch noise early in the ramp does not win: the slope is measured across a decade
    noisy = loss + np.where(np.arange(200) < 5, np.random.default_rng(0).normal(0, 0.05, 200), 0)
    assert 10**-3.2 < suggest(lrs, noisy, "steepest").lr < 10**-2.8
    assert steep.clear and 0.5 < steep.fall < 0.6  # (from 1 to about 0.42)
    # a curve that never falls clearly (noise around a level, then the blow-up) says its suggestion is a guess
    flat = 0.12 + np.random.default_rng(1).normal(0, 0.002, 200) + np.exp(3 * (np.log10(lrs) - np.log10(0.3)))
    guess = suggest(lrs, flat, "steepest")
    assert not guess.clear and guess.fall < 0.1
    e = {"suggested_lr": guess.lr, "train_lr": guess.lr, "rule": "steepest", "steps": 200, "ended": "end of ramp"}
    assert "no clear fall" in lr_suggestion_text({**e, "fall": guess.fall, "clear": False})
    assert "no clear fall" not in lr_suggestion_text({**e, "fall": steep.fall, "clear": True})


def test_the_smoothing_is_bias_corrected():
    ema = Ema(0.9)
    assert ema.add(2.0) == pytest.approx(2.0)  # not 0.2: the first value is not pulled toward 0
    assert ema.add(2.0) == pytest.approx(2.0)
    assert 2.0 < ema.add(4.0) < 3.0


@pytest.mark.slow
def test_lr_find_runs_under_torchrun_and_applies_its_suggestion(tmp_path, tiny_preset):
    runs, out = tmp_path / "runs", tmp_path / "tiny-lr.toml"
    common = ["--runs-dir", runs, "--apply-to", out, "--set", "prune.enabled=true", "--set", "prune.end_epoch=2"]
    # bf16 autocast on the CPU: the GPU's training-step path (run_step), channels_last as every run
    r = chexui("lr-find", tiny_preset, "--nproc", "2", "--set", "lr_find.steps=12", "--set", "train.amp=bf16", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    run = only_run(runs)
    ev = events_of(run)
    steps = [e for e in ev if e["type"] == "lr_find_step"]
    (found,) = [e for e in ev if e["type"] == "lr_suggested"]
    # rank 0 alone wrote them, one per step, on the exponential ramp from start_lr (1e-6) to end_lr (1)
    assert [e["step"] for e in steps] == list(range(1, found["steps"] + 1)) and found["steps"] >= 4
    assert [e["lr"] for e in steps] == pytest.approx(list(ramp(1e-6, 1.0, 12)[: found["steps"]]))
    assert all(math.isfinite(e["loss"]) for e in steps[:-1])
    # the ramp is the optimizer's LR over 2 processes: the preset's train.lr is half of it (linear scaling)
    assert found["world_size"] == 2 and found["train_lr"] == pytest.approx(found["suggested_lr"] / 2)
    assert found["rule"] == "steepest" and found["suggested_lr"] in [e["lr"] for e in steps]
    assert (run / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{found['suggested_lr']:.3g}" in r.stdout and "preset written" in r.stdout
    started = next(e for e in ev if e["type"] == "run_started")
    assert started["world_size"] == 2 and not started["config"]["prune"]["enabled"]  # the float model alone
    assert started["amp"] == "bfloat16" and started["channels_last"]
    assert not any((run / "checkpoints").glob("*.pt"))  # nothing kept of the ramp's weights
    assert [e["status"] for e in ev if e["type"] == "run_finished"] == ["completed"]
    # the preset --apply wrote: the preset as the test ran it, its pruning kept, with the suggestion
    from chexui import presets

    cfg = presets.resolve(str(out))
    assert cfg["train"]["lr"] == pytest.approx(found["train_lr"], rel=5e-3)
    assert cfg["distributed"]["nproc"] == 2 and cfg["prune"]["enabled"] and not cfg["lr_find"]["enabled"]
    assert f"suggested LR {found['suggested_lr']:.3g} (steepest rule" in r.stdout
    # it is never overwritten: refused before anything runs
    again = chexui("lr-find", tiny_preset, *common)
    assert again.returncode == 2 and "exists already" in again.stderr and len(list(runs.iterdir())) == 1


def test_launcher_find_lr_shows_the_curve_and_puts_the_suggestion_in_the_form(tmp_path, monkeypatch):
    """The Find LR button starts the range test of the form's config (compression off) as a run, draws
    its curve as the events come, and sets the LR field to its suggestion; the monitor of that run shows
    the curve too."""
    from chexui import launch
    from chexui.tui.app import make_app
    from chexui.tui.launcher import LauncherScreen
    from chexui.tui.monitor import MonitorScreen
    from chexui.tui.widgets.loss_plot import LossPlot
    from chexui.tui.widgets.lr_plot import LRPlot
    from engine import rundir

    started: list[Path] = []

    def replay(run_dir: Path, runs_dir: Path, *_):  # the engine's events, recorded from a real test
        started.append(run_dir)
        shutil.copy(RECORDED, run_dir / "events.jsonl")
        return 0

    monkeypatch.setattr(launch, "start_detached", replay)

    async def go():
        from textual.widgets import Button, Input, Select

        app = make_app(tmp_path / "runs")
        async with app.run_test(size=(120, 50)) as pilot:
            screen = app.screen
            assert isinstance(screen, LauncherScreen)
            await until(pilot, lambda: not screen.query_one("#lr-find", Button).disabled)
            screen.query_one("#compression", Select).value = "qat-all"
            await pilot.pause(0.05)
            screen.query_one("#lr-find", Button).press()
            await until(pilot, lambda: screen.lr_test is not None and screen.lr_test.finished is not None)
            plot = screen.query_one(LRPlot)
            assert plot.display and len(plot.curve[0]) == 40 and plot.curve[1]["rule"] == "steepest"
            assert screen.query_one("#lr", Input).value == f"{plot.curve[1]['train_lr']:.3g}"
            assert not screen.query_one("#lr-find", Button).disabled
            # the test's own monitor (from the runs browser) shows the curve in the loss pane's place
            app.open_monitor(started[0])
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.state.finished)
            assert app.screen.query_one(LRPlot).display and not app.screen.query_one(LossPlot).display
            assert len(app.screen.query_one(LRPlot).curve[0]) == 40

    asyncio.run(go())
    (run_dir,) = started
    cfg = rundir.load_config(run_dir)
    assert cfg["lr_find"]["enabled"] and not cfg["quantize"]["enabled"] and cfg["name"] == "lr-find-demo"


def test_a_sweep_with_lr_find_trains_each_configuration_at_its_own_range_tests_suggestion(tmp_path):
    """presets/study/architectures.sweep.toml: one LR range test per architecture (not per seed), each
    architecture's runs at its suggestion; compare leaves the range tests out."""
    from chexui import sweep as sweep_mod
    from chexui.commands.study import _run_dirs
    from engine import config

    base = tmp_path / "runs"
    sw = sweep_mod.load_file(sweep_mod.find_file("study/architectures"), [], None, base)
    tests = [p for p in sw.points if p.get("lr_find")]
    runs = [p for p in sw.points if "lr_from" in p]
    assert len(tests) == 8 and len(runs) == 8 * 3 and len(sw.points) == 32
    assert {sw.points[p["lr_from"]]["overrides"]["model.arch"] for p in runs} == set(sw.grid["model.arch"])
    assert all(sw.points[p["lr_from"]]["overrides"]["model.arch"] == p["overrides"]["model.arch"] for p in runs)
    assert sweep_mod.point_label(tests[0]) == "LR range test arch=densenet121"
    test_cfg = sw.config(tests[0])
    assert test_cfg["lr_find"]["enabled"] and test_cfg["model"]["arch"] == "densenet121"
    # the range test of densenet121 ran (its recorded events) and suggested an LR: seed 1's run takes it
    first = sw.points.index(tests[0])
    (base / "20260101-000000-lr").mkdir(parents=True)
    shutil.copy(RECORDED, base / "20260101-000000-lr" / "events.jsonl")
    sw.points[first]["run"] = "20260101-000000-lr"
    found = next(e for e in events_of(base / "20260101-000000-lr") if e["type"] == "lr_suggested")
    seed1 = next(p for p in runs if p["lr_from"] == first and p["overrides"]["train.seed"] == 1)
    assert sw.config(seed1, base)["train"]["lr"] == found["train_lr"] != config.defaults()["train"]["lr"]
    sweep_mod.save(sw, base)
    assert _run_dirs([sw.id], base) == []  # the range test is not an arm
    # a range test that suggested nothing: its runs are refused with the reason
    (base / "20260101-000000-lr" / "events.jsonl").write_text("")
    with pytest.raises(Exception, match="suggested no LR"):
        sw.config(seed1, base)
