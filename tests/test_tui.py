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
from chexui.tui.compare_screen import CompareScreen
from chexui.tui.launcher import LauncherScreen
from chexui.tui.monitor import MonitorScreen
from chexui.tui.runs_browser import RunsScreen
from engine.labels import LABELS
from tests.conftest import events_of

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


def screen_text(app) -> str:
    """The screen as the terminal shows it, one line per row (Textual's compositor, as it renders)."""
    return "\n".join("".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips())


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
                # (every row: the table fills after the screen shows, and a fast machine reads it midway)
                lambda: (
                    isinstance(app.screen, CompareScreen)
                    and app.screen.query_one(DataTable).row_count == len(LABELS) + 2
                ),
            )
            assert isinstance(app.screen, CompareScreen)
            rows = cells(app.screen.query_one(DataTable))
            # label, the two runs, the published reference (no paired column: nothing to pair)
            assert [r[0] for r in rows] == [*LABELS, "mean", "labels in mean"] and len(rows[0]) == 4
            # recorded before predictions were kept: no paired difference, and the note says why
            assert "no saved predictions" in text_of(app, "#note")
            await pilot.press("b", "enter")
            await until(pilot, lambda: monitor_loaded(app))
            assert isinstance(app.screen, MonitorScreen) and app.screen.state.status == "completed"

    asyncio.run(go())


def test_runs_browser_lists_a_runs_explanations_and_opens_one_in_the_viewer(tmp_path, monkeypatch):
    from chexui.tui import explanations

    run = recorded_run(tmp_path, "prune")
    (run / "explain" / "sub").mkdir(parents=True)
    for name in ("img1-fp32-Mass.png", "img1-compare.png", "sub/img2-compare.png"):
        (run / "explain" / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(2000))
    opened = []
    monkeypatch.setattr(explanations, "open_in_viewer", lambda path: opened.append(path) or True)

    async def go():
        app = make_app(tmp_path / "runs", start="runs", poll_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.screen.query_one(DataTable).row_count == 1)
            await pilot.press("x")
            await until(
                pilot,
                lambda: (
                    isinstance(app.screen, explanations.ExplanationsScreen)
                    and app.screen.query_one(DataTable).row_count == 3
                ),
            )
            assert isinstance(app.screen, explanations.ExplanationsScreen)
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


async def press_with_preset(pilot, app, preset: str, button: str) -> None:
    """In the launcher: load the preset into the form, then press the button once the form is valid."""
    await until(pilot, lambda: app.screen.query_one("#presets", DataTable).row_count > 0)
    app.screen.load_preset(preset)
    await until(pilot, lambda: not app.screen.query_one(button, Button).disabled)
    app.screen.query_one(button, Button).press()


def test_launcher_submits_the_form_as_a_slurm_job_and_lists_it(tmp_path, tiny_preset, monkeypatch):
    """Submit to SLURM: the form's config as a run dir with its sbatch script, submitted (a stand-in
    sbatch here; tests/test_slurm_cluster.py runs real ones), then the runs browser with the run."""
    from tests.test_slurm import FAKE_SBATCH, stand_ins

    stand_ins(tmp_path, monkeypatch, sbatch=FAKE_SBATCH)
    monkeypatch.setenv("CHEXUI_PRESETS", str(tiny_preset.parent))
    runs = tmp_path / "runs"

    async def go():
        app = make_app(runs, poll_s=0.1)
        async with app.run_test(size=(100, 40)) as pilot:
            await press_with_preset(pilot, app, "tiny", "#slurm")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), timeout=60)
            assert isinstance(app.screen, RunsScreen)

    asyncio.run(go())
    (run_dir,) = runs.iterdir()
    assert "#SBATCH --nodes=1" in (run_dir / "slurm.sbatch").read_text()
    assert [e["type"] for e in events_of(run_dir)] == ["slurm_submitted"] and events_of(run_dir)[0]["job_id"] == "4242"


def test_the_monitor_of_a_slurm_run_shows_the_schedulers_word(tmp_path, tiny_preset, monkeypatch):
    """A submitted run whose job waits: the monitor's status is the job's state as squeue reports it,
    not "engine ended without finishing" (its launcher is on a node of the cluster, not here)."""
    from tests.test_hostile import in_process
    from tests.test_slurm import FAKE_SBATCH, FAKE_SQUEUE, stand_ins

    bin_dir = stand_ins(tmp_path, monkeypatch, sbatch=FAKE_SBATCH, squeue=FAKE_SQUEUE)
    runs = tmp_path / "runs"
    assert in_process("run", "--preset", tiny_preset, "--slurm", "--runs-dir", runs).returncode == 0
    (run,) = runs.iterdir()
    (bin_dir / "state").write_text("PENDING\n")
    (bin_dir / "command").write_text(str(run / "slurm.sbatch"))

    async def go():
        app = make_app(runs, run=run, poll_s=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: "SLURM job 4242: PENDING" in text_of(app, "#status"))
            assert "SLURM job 4242: PENDING" in text_of(app, "#status")

    asyncio.run(go())


@pytest.mark.slow
def test_launcher_starts_a_real_run_and_shows_final_table(tmp_path, tiny_preset, monkeypatch):
    monkeypatch.setenv("CHEXUI_PRESETS", str(tiny_preset.parent))
    runs = tmp_path / "runs"

    async def go():
        app = make_app(runs, poll_s=0.1)
        async with app.run_test(size=(100, 40)) as pilot:
            await press_with_preset(pilot, app, "tiny", "#start")
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


def test_at_160x48_the_auroc_pane_shows_whole_label_names_and_both_ends_of_each_ci(tmp_path):
    """Pneumonia and Pneumothorax both read whole, each on the line of its own CI, threshold,
    sensitivity and specificity; the loss plot has the rest of the width."""
    from chexui.format import auroc_rows

    def check(app):
        test = app.screen.state.test
        lines = screen_text(app).splitlines()
        rows, _ = auroc_rows(test, digits=2)
        for r in rows:
            line = next(line for line in lines if f" {r.label} " in line)
            assert r.ci in line and r.ci.count("-") == 1 and all(x in line for x in r.at)
        assert any("Pneumonia " in line for line in lines) and any("Pneumothorax " in line for line in lines)
        aucs, loss = app.screen.query_one("#aucs"), app.screen.query_one("#loss")
        assert aucs.region.width == aucs.needed_width and loss.region.width > 80

    on_recorded_monitor(tmp_path, "full", (160, 48), check)


def test_at_80x24_help_names_the_keys_that_show_each_pane_whole(tmp_path):
    from chexui.tui.help import HelpScreen

    run = recorded_run(tmp_path, "full")
    (run / "logs" / "engine.log").write_text("short line\n" + "a long engine log line " * 12 + "THE-END\n")

    async def go():
        app = make_app(tmp_path / "runs", run=run, poll_s=0.05)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: monitor_loaded(app) and "short line" in screen_text(app))
            test = app.screen.state.test
            assert "0.228-1.000" not in screen_text(app)  # 80 columns: the CI column does not fit ...
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_text = "\n".join(str(block._markdown) for block in app.screen.query("Markdown"))
            assert "`1` `2` `3` `4`" in help_text and "AUROC table" in help_text and "`escape`" in help_text
            await pilot.press("escape", "2")  # ... the key the help names shows it whole
            await until(pilot, lambda: "0.228-1.000" in screen_text(app))
            lines = screen_text(app).splitlines()
            for label in LABELS:
                ci = test["auc_ci"][label]
                assert any(f" {label} " in line and f"{ci[0]:.3f}-{ci[1]:.3f}" in line for line in lines)
            await pilot.press("escape")
            await until(pilot, lambda: app.screen.maximized is None)
            # the log wraps at its pane's width: the long line's end is on screen, full-screen too
            assert "THE-END" in screen_text(app)
            await pilot.press("4")
            log = app.screen.query_one("#log")
            await until(
                pilot, lambda: app.screen.maximized is log and log.region.width == 80 and "THE-END" in screen_text(app)
            )
            assert "short line" in screen_text(app)

    asyncio.run(go())


def test_qat_observers_column_and_gpu_utilisation_per_rank(tmp_path):
    """A QAT run's epochs say whether its observers still move; on CUDA the memory line adds each rank's
    GPU utilisation (what the engine puts in `epoch_ended`: engine/training/loop.py Utilisation)."""
    run = recorded_run(tmp_path, "two_rank")
    evs = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    for e in evs:
        if e["type"] == "epoch_ended":
            e["qat_observers"] = "frozen" if e["epoch"] == 3 else "live"
            e["gpu_util"] = [87.0, 80.0]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))

    def check(app):
        table = app.screen.query_one("#epochs", DataTable)
        assert [str(c.label) for c in table.columns.values()][-1] == "QAT observers"
        assert [r[-1] for r in cells(table)] == ["live", "live", "frozen"]
        assert text_of(app, "#memory") == "memory MB/rank r0:1071 r1:1061 · GPU util r0:87% r1:80%"

    async def go():
        app = make_app(tmp_path / "runs", run=run, poll_s=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: monitor_loaded(app))
            check(app)

    asyncio.run(go())


def test_runs_browser_sorts_and_filters(tmp_path):
    for name in ("two_rank", "prune", "failed"):
        recorded_run(tmp_path, name)

    def ids(app) -> list[str]:
        return [r[1].rsplit("-", 1)[-1] for r in cells(app.screen.query_one("#runs", DataTable))]

    async def go():
        app = make_app(tmp_path / "runs", start="runs", poll_s=0.05)
        async with app.run_test(size=(200, 40)) as pilot:
            await until(pilot, lambda: len(ids(app)) == 3)
            assert ids(app) == ["two_rank", "prune", "failed"]  # newest first (by run dir name)
            headers = [str(c.label) for c in app.screen.query_one("#runs", DataTable).columns.values()]
            assert headers[1:] == [
                "run", "status", "preset", "arch", "world", "epochs", "val AUROC (ep)",
                "test AUROC (95% CI)", "sparsity", "smallest file",
            ]  # fmt: skip
            await pilot.press(*["s"] * 8)  # the 8th column: test AUROC, highest first, none last
            await until(pilot, lambda: "sorted by test AUROC" in text_of(app, "#title"))
            assert ids(app) == ["prune", "two_rank", "failed"]
            await pilot.press("S")
            await until(pilot, lambda: ids(app) == ["two_rank", "prune", "failed"])
            await pilot.press("slash", *"status:failed")
            await until(pilot, lambda: ids(app) == ["failed"])
            assert "1 of 3 runs" in text_of(app, "#title")
            await pilot.press("escape")
            await until(pilot, lambda: len(ids(app)) == 3)
            await pilot.press("slash", *"resnet18 two", "enter")  # words anywhere in the row, all of them
            await until(pilot, lambda: ids(app) == ["two_rank"])

    asyncio.run(go())


def test_rows_from_the_loader_thread_that_come_while_the_widgets_go_are_dropped(tmp_path):
    """The loader thread's rows can reach the runs browser while the App tears its widgets down on exit
    (once in the suite: NoMatches for '#title', the test failed): they are dropped, the browser stays."""
    recorded_run(tmp_path, "prune")

    async def go():
        app = make_app(tmp_path / "runs", start="runs", poll_s=0.05)
        async with app.run_test(size=(160, 40)) as pilot:
            screen = app.screen
            await until(pilot, lambda: screen.query_one("#runs", DataTable).row_count == 1)
            rows = list(screen.rows.values())
            await screen.query_one("#title").remove()
            screen.show(rows)  # what call_from_thread runs for the loader: no NoMatches
            assert screen.query_one("#runs", DataTable).row_count == 1 and app.screen is screen

    asyncio.run(go())


def test_command_palette_offers_the_apps_actions_and_opens_a_run_by_name(tmp_path):
    from textual.command import CommandList, CommandPalette

    run = recorded_run(tmp_path, "prune")
    recorded_run(tmp_path, "two_rank")
    shutil.copytree(run, tmp_path / "runs" / "20260101-000000-x[b]y[$accent][@click=app.quit]")  # a hostile name

    async def go():
        app = make_app(tmp_path / "runs", run=run, poll_s=0.05)
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: monitor_loaded(app))
            titles = [c.title for c in app.get_system_commands(app.screen)]
            await pilot.press("ctrl+p", *"@click")  # markup in a name: shown as written
            await until(pilot, lambda: "x[b]y[$accent][@click=app.quit]" in screen_text(app))
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
            for title in ("Stop run", "Explanations", "Help", "Runs browser", "Start preset prune70", "Theme"):
                assert title in titles, title
            assert "Open run 20260101-000000-two_rank" in titles
            await pilot.press("ctrl+p")
            await until(pilot, lambda: isinstance(app.screen, CommandPalette))
            await pilot.press(*"two_rank")
            # (the palette searches in the background: wait for its one match)
            await until(pilot, lambda: app.screen.query_one(CommandList).option_count == 1)
            await pilot.press("enter")
            await until(
                pilot, lambda: isinstance(app.screen, MonitorScreen) and app.screen.run_dir.name.endswith("two_rank")
            )
            await until(pilot, lambda: monitor_loaded(app))
            assert app.screen.state.world_size == 2

    asyncio.run(go())


def test_run_index_reads_again_only_the_runs_that_changed(tmp_path, monkeypatch):
    """The runs browser's refresh: a stat per run, a read only of a run whose events changed."""
    from chexui import runs as runs_mod

    for name in ("two_rank", "prune", "failed"):
        recorded_run(tmp_path, name)
    index = runs_mod.RunIndex(tmp_path / "runs")
    assert index.refresh() and len(index.rows) == 3
    loaded = []
    real = runs_mod.load_run
    monkeypatch.setattr(runs_mod, "load_run", lambda d: loaded.append(d.name) or real(d))
    assert not index.refresh() and loaded == []
    run = tmp_path / "runs" / "20260101-000000-prune"
    with open(run / "events.jsonl", "a") as f:
        f.write(json.dumps({"v": 1, "type": "restarted", "ts": 1.0, "attempt": 1, "resumed_epoch": 3}) + "\n")
    assert index.refresh() and loaded == ["20260101-000000-prune"]  # resumed, then no launcher: failed
    assert {r["id"]: r["status"] for r in index.rows}["20260101-000000-prune"] == "failed"
    shutil.rmtree(tmp_path / "runs" / "20260101-000000-failed")
    assert index.refresh() and len(index.rows) == 2


@pytest.mark.slow
def test_compare_shows_paired_differences_with_their_ci_and_pools_seeds_into_arms(tmp_path, compressed_run):
    """Runs with saved test predictions (copies of one real run): the compare screen adds each run's
    paired difference from the first marked, its 95 % CI and p; runs that differ only by train.seed are
    pooled into arms (their mean ± SD, a bootstrap over patients and seeds)."""
    run, _ = compressed_run

    def copy(name: str, **train) -> None:
        dst = tmp_path / "runs" / name
        dst.mkdir(parents=True)
        shutil.copyfile(run / "config.toml", dst / "config.toml")
        shutil.copytree(run / "predictions", dst / "predictions")
        evs = events_of(run)
        evs[0]["config"]["train"].update(train)  # run_started: the run's config
        (dst / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in evs))

    def compared(app, *keys: str):
        async def go_(pilot):
            await until(pilot, lambda: app.screen.query_one(DataTable).row_count == 4)
            await pilot.press(*keys, "c")
            await until(pilot, lambda: isinstance(app.screen, CompareScreen) and "baseline" in app.screen.note, 60)
            table = app.screen.query_one(DataTable)
            return [str(c.label) for c in table.columns.values()], {r[0]: r for r in cells(table)}

        return go_

    copy("20260101-000004-a", seed=0)
    copy("20260101-000003-b", seed=1)
    copy("20260101-000002-c", seed=0, lr=0.002)
    copy("20260101-000001-d", seed=1, lr=0.002)
    same = ("+0.0000 (+0.0000 to +0.0000) p=1.000", "+0.0000 (no CI: too few patients)")

    async def go():
        app = make_app(tmp_path / "runs", start="runs", poll_s=0.05)
        async with app.run_test(size=(200, 50)) as pilot:
            headers, rows = await compared(app, "space", "down", "down", "space")(pilot)  # a and c: lr differs
            assert headers[-1].endswith("- baseline") and len(headers) == 5  # label, a, c, reference, c - a
            # the same predictions: no difference, and a CI of width 0 (a label with positives from too
            # few patients for a bootstrap says so)
            assert rows["mean"][-1] == same[0] and all(rows[label][-1] in same for label in LABELS)
            await pilot.press("b")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen))
            await pilot.press("space", "up", "up", "space")  # unmark c and a
            # (a, b) and (c, d): two arms of two seeds each
            headers, rows = await compared(app, "space", "down", "space", "down", "space", "down", "space")(pilot)
            assert headers[1:3] == ["LR=0.001 (2 seeds)", "LR=0.002 (2 seeds)"] and headers[-1].endswith("- baseline")
            assert "then the seeds within each arm" in app.screen.note  # the bootstrap over seeds too
            assert rows["mean"][1].endswith("± 0.0000")  # the seeds' SD (identical predictions: 0)
            assert rows["mean"][-1] == same[0]

    asyncio.run(go())
