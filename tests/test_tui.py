"""The Textual app, driven with Pilot and fed from recorded event files (tests/data/events/*.jsonl,
re-recorded from real runs by tests/data/record_events.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest
from textual.widgets import Button, DataTable, Input, Static

from chexui.tui.app import make_app
from chexui.tui.launcher import LauncherScreen
from chexui.tui.monitor import MonitorScreen
from chexui.tui.runs_browser import CompareScreen, RunsScreen
from engine.labels import LABELS

RECORDED = Path(__file__).parent / "data" / "events"


def recorded_run(tmp_path: Path, name: str, cut: int | None = None) -> Path:
    """A run dir whose events.jsonl is a recording (optionally only its first `cut` lines)."""
    run = tmp_path / "runs" / f"20260101-000000-{name}"
    (run / "logs").mkdir(parents=True)
    lines = (RECORDED / f"{name}.jsonl").read_text().splitlines(keepends=True)
    (run / "events.jsonl").write_text("".join(lines[:cut]))
    started = json.loads(lines[0])
    (run / "config.toml").write_text(f'name = "{started["config"]["name"]}"\n')
    return run


async def until(pilot, condition, timeout: float = 20.0) -> None:
    """Let the app run until `condition()` holds (what the next lines assert has been processed), or
    fail: no fixed sleep, so a fast machine does not wait and a slow one does not flake."""
    end = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # (a widget not mounted yet)
            pass
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for the app")
        await pilot.pause(0.02)


def monitor_loaded(app, status: str = "completed") -> bool:
    """The monitor has read the recorded run through to its status and filled its tables."""
    screen = app.screen
    return (
        isinstance(screen, MonitorScreen)
        and screen.state.status == status
        and screen.query_one("#epochs", DataTable).row_count == len(screen.state.epochs)
        and (not screen.state.test or screen.query_one("#aucs", DataTable).row_count > 0)
    )


def text_of(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).render())


def cells(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def on_recorded_monitor(tmp_path, name: str, size: tuple[int, int], check, status: str = "completed") -> None:
    """Open the monitor on a recorded run, let it load, then `check(app)`."""
    run = recorded_run(tmp_path, name)

    async def go():
        app = make_app(tmp_path / "runs", run=run, poll_s=0.05)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: monitor_loaded(app, status))
            check(app)

    asyncio.run(go())


def test_two_rank_finished_run_shows_memory_per_rank_and_test_table(tmp_path):
    run = recorded_run(tmp_path, "two_rank")

    async def go():
        app = make_app(tmp_path / "runs", run=run, poll_s=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: monitor_loaded(app))
            screen = app.screen
            assert isinstance(screen, MonitorScreen)
            assert screen.state.world_size == 2 and screen.state.status == "completed"
            assert "r0:" in text_of(app, "#memory") and "r1:" in text_of(app, "#memory")
            aucs = screen.query_one("#aucs", DataTable)
            assert aucs.border_title == "test AUROC"
            rows = cells(aucs)
            assert [r[0] for r in rows] == list(LABELS) + ["mean (14/14)"]
            assert "completed" in text_of(app, "#status") and "world 2" in text_of(app, "#status")
            assert screen.query_one("#epochs", DataTable).row_count == len(screen.state.epochs) >= 2

    asyncio.run(go())


def test_test_table_shows_the_operating_point_beside_auroc(tmp_path):
    """A test evaluation with calls at validation thresholds: threshold, sensitivity, specificity columns."""
    run = recorded_run(tmp_path, "two_rank")
    evs = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    for e in evs:
        if e["type"] == "evaluated" and e["split"] == "test":
            e["operating_point"] = "sensitivity=0.9"
            e["at_threshold"] = {
                name: {"threshold": 0.25 + j / 100, "sensitivity": 0.9, "specificity": 0.5 + j / 100}
                for j, name in enumerate(LABELS)
            }
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))

    async def go():
        app = make_app(tmp_path / "runs", run=run, poll_s=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: monitor_loaded(app))
            aucs = app.screen.query_one("#aucs", DataTable)
            assert aucs.border_title == "test AUROC · calls at sensitivity=0.9 thresholds"
            assert [str(c.label) for c in aucs.columns.values()] == ["label", "AUROC", "95% CI", "thr", "sens", "spec"]
            rows = cells(aucs)
            assert rows[1][0] == "Cardiomegaly" and rows[1][3:] == ["0.26", "0.90", "0.51"]

    asyncio.run(go())


def test_pruning_run_has_sparsity_column(tmp_path):
    def check(app):
        table = app.screen.query_one("#epochs", DataTable)
        labels = [str(c.label) for c in table.columns.values()]
        assert labels[-1] == "sparsity"
        last = cells(table)[-1]
        assert float(last[-1]) == pytest.approx(0.70, abs=0.005)

    on_recorded_monitor(tmp_path, "prune", (120, 40), check)


def test_failed_run_shows_the_error(tmp_path):
    def check(app):
        status = text_of(app, "#status")
        assert "failed" in status and "error:" in status and "cannot read image" in status

    on_recorded_monitor(tmp_path, "failed", (100, 30), check, status="failed")


def test_partial_line_deleted_dir_and_dead_engine(tmp_path):
    """A half-written last line, an engine that died without run_finished, a run dir deleted while
    watched: the app says what happened and keeps running."""
    lines = (RECORDED / "two_rank.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(lines) if '"epoch_ended"' in line) + 1
    run = recorded_run(tmp_path, "two_rank", cut=cut)
    with open(run / "events.jsonl", "a") as f:
        f.write(lines[cut][: len(lines[cut]) // 2])  # partial line, no newline

    async def go():
        app = make_app(tmp_path / "runs", run=run, poll_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: "engine ended without finishing" in text_of(app, "#status"))
            screen = app.screen
            assert len(screen.state.epochs) == 1
            assert "engine ended without finishing" in text_of(app, "#status")
            with open(run / "events.jsonl", "a") as f:  # the writer finishes its line
                f.write(lines[cut][len(lines[cut]) // 2 :])
            await until(pilot, lambda: screen.state.events[-1] == json.loads(lines[cut]))
            assert screen.state.events[-1] == json.loads(lines[cut])
            shutil.rmtree(run)
            await until(pilot, lambda: "run directory deleted" in text_of(app, "#status"))
            assert "run directory deleted" in text_of(app, "#status")
            assert app.is_running

    asyncio.run(go())


def test_runs_browser_opens_and_compares(tmp_path):
    recorded_run(tmp_path, "two_rank")
    recorded_run(tmp_path, "prune")

    async def go():
        app = make_app(tmp_path / "runs", start="runs", poll_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.screen.query_one(DataTable).row_count == 2)
            assert isinstance(app.screen, RunsScreen)
            table = app.screen.query_one(DataTable)
            assert table.row_count == 2 and {r[2] for r in cells(table)} == {"completed"}
            await pilot.press("space", "down", "space", "c")
            await until(
                pilot,
                lambda: isinstance(app.screen, CompareScreen) and app.screen.query_one(DataTable).row_count > 0,
            )
            assert isinstance(app.screen, CompareScreen)
            rows = cells(app.screen.query_one(DataTable))
            assert [r[0] for r in rows] == list(LABELS) + ["mean (14/14)"] and len(rows[0]) == 4
            # recorded before predictions were kept: no paired difference, and the note says why
            assert "no saved predictions" in text_of(app, "#note")
            await pilot.press("b", "enter")
            await until(pilot, lambda: monitor_loaded(app))
            assert isinstance(app.screen, MonitorScreen) and app.screen.state.status == "completed"

    asyncio.run(go())


def test_runs_browser_lists_a_runs_explanations_and_opens_one_in_the_viewer(tmp_path, monkeypatch):
    from chexui.tui import runs_browser

    run = recorded_run(tmp_path, "prune")
    (run / "explain" / "sub").mkdir(parents=True)
    for name in ("img1-fp32-Mass.png", "img1-compare.png", "sub/img2-compare.png"):
        (run / "explain" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    opened = []
    monkeypatch.setattr(runs_browser, "open_in_viewer", lambda path: opened.append(path) or True)

    async def go():
        app = make_app(tmp_path / "runs", start="runs", poll_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.screen.query_one(DataTable).row_count == 1)
            await pilot.press("x")
            await until(
                pilot,
                lambda: (
                    isinstance(app.screen, runs_browser.ExplanationsScreen)
                    and app.screen.query_one(DataTable).row_count == 3
                ),
            )
            assert isinstance(app.screen, runs_browser.ExplanationsScreen)
            rows = cells(app.screen.query_one(DataTable))  # side-by-side figures first
            assert [r[0] for r in rows] == ["img1-compare.png", "sub/img2-compare.png", "img1-fp32-Mass.png"]
            assert "3 images in" in text_of(app, "#note")
            await pilot.press("down", "enter")
            await until(pilot, lambda: bool(opened))
            assert opened == [run / "explain" / "sub" / "img2-compare.png"]
            await pilot.press("b")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen))
            assert isinstance(app.screen, RunsScreen)

    asyncio.run(go())


def test_launcher_flags_invalid_fields_before_start(tmp_path):
    async def go():
        app = make_app(tmp_path / "runs")
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.screen.query_one("#presets", DataTable).row_count > 0)
            screen = app.screen
            assert isinstance(screen, LauncherScreen)
            names = [r[0] for r in cells(screen.query_one("#presets", DataTable))]
            assert {"demo", "densenet121", "resnet50"} <= set(names)
            batch = screen.query_one("#batch_size", Input)
            batch.value = "0"
            await until(pilot, lambda: batch.has_class("invalid"))
            assert batch.has_class("invalid") and screen.query_one("#start", Button).disabled
            assert "train.batch_size" in text_of(app, "#form-error")
            batch.value = "16"
            await until(pilot, lambda: not batch.has_class("invalid"))
            assert not batch.has_class("invalid") and not screen.query_one("#start", Button).disabled
            screen.query_one("#data", Input).value = str(tmp_path / "nope")
            await until(pilot, lambda: "problem" in text_of(app, "#data-summary"))
            assert "problem" in text_of(app, "#data-summary")

    asyncio.run(go())


def test_launcher_saves_a_preset(tmp_path, monkeypatch):
    shared = tmp_path / "shared-presets"
    shared.mkdir()
    monkeypatch.setenv("CHEXUI_PRESETS", str(shared))

    async def go():
        app = make_app(tmp_path / "runs")
        async with app.run_test(size=(100, 40)) as pilot:
            await until(pilot, lambda: app.screen.query_one("#presets", DataTable).row_count > 0)
            screen = app.screen
            screen.query_one("#lr", Input).value = "0.005"
            screen.query_one("#save-name", Input).value = "my-demo"
            await until(pilot, lambda: screen.overrides() and "train.lr=0.005" in screen.overrides())
            screen.save_preset()

    asyncio.run(go())
    from chexui import presets

    cfg = presets.resolve("my-demo")
    assert cfg["train"]["lr"] == 0.005 and (shared / "my-demo.toml").is_file()


@pytest.mark.slow
def test_launcher_starts_a_real_run_and_shows_final_table(tmp_path, tiny_preset, monkeypatch):
    monkeypatch.setenv("CHEXUI_PRESETS", str(tiny_preset.parent))
    runs = tmp_path / "runs"

    async def go():
        app = make_app(runs, poll_s=0.1)
        async with app.run_test(size=(100, 40)) as pilot:
            await until(pilot, lambda: app.screen.query_one("#presets", DataTable).row_count > 0)
            app.screen.load_preset("tiny")
            await until(pilot, lambda: not app.screen.query_one("#start", Button).disabled)
            app.screen.query_one("#start", Button).press()
            end = time.time() + 180
            while time.time() < end:
                await pilot.pause(0.5)
                screen = app.screen
                if isinstance(screen, MonitorScreen) and screen.state.test and not screen.launcher_alive:
                    break
            screen = app.screen
            assert isinstance(screen, MonitorScreen) and screen.state.status == "completed"
            await until(pilot, lambda: monitor_loaded(app))
            rows = cells(screen.query_one("#aucs", DataTable))
            assert [r[0] for r in rows[:-1]] == list(LABELS) and rows[-1][0].startswith("mean (")
            # a live run's test evaluation carries its 95 % CIs: lo-hi around the AUROC
            lo, hi = map(float, rows[-1][2].split("-"))
            assert lo <= float(rows[-1][1]) <= hi
            # and the calls at the thresholds the run chose on validation
            assert screen.query_one("#aucs", DataTable).border_title == "test AUROC · calls at youden thresholds"
            assert all(0 <= float(r[3]) <= 1 for r in rows[:-1] if r[3] != "-")

    asyncio.run(go())
