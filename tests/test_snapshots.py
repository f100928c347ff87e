"""What the screens look like, at 80x24, 120x40 and 200x60: SVG snapshots (pytest-textual-snapshot) of
the launcher, the monitor of a recorded pruning run, the runs browser and compare. A layout change fails
these; when the change is meant, look at the report and accept it with

    .venv/bin/python -m pytest tests/test_snapshots.py --snapshot-update

The README's screenshots (docs/launcher.svg, docs/monitor.svg) are copies of two of them, checked by
test_readme_screenshots_are_snapshots; `python -m tests.test_snapshots` copies them again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.widgets import DataTable

from chexui.tui.app import make_app
from chexui.tui.compare_screen import CompareScreen
from chexui.tui.launcher import LauncherScreen
from chexui.tui.runs_browser import RunsScreen
from tests.test_tui import monitor_loaded, recorded_run

SIZES = {"80x24": (80, 24), "120x40": (120, 40), "200x60": (200, 60)}
SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_snapshots"
DOCS = Path(__file__).parent.parent / "docs"
README_SHOTS = {"launcher.svg": "test_launcher[120x40].svg", "monitor.svg": "test_monitor_of_a_pruning_run[120x40].svg"}


@pytest.fixture()
def scene(tmp_path, monkeypatch):
    """Recorded runs in ./runs of an empty working dir (paths on screen are relative: the same in every
    checkout), the built-in presets only (no user preset another test of this process saved), colours
    on (the suite sets NO_COLOR), no GPU."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr("chexui.tui.launcher.gpu_count", lambda: 0)
    for name in ("prune", "two_rank", "failed"):
        recorded_run(tmp_path, name)
    return Path("runs")


def waiting_for(condition):
    """A `run_before` that lets the app run until `condition(app)` holds (no fixed sleep)."""

    async def run_before(pilot) -> None:
        for _ in range(1000):
            try:
                if condition(pilot.app):
                    break
            except Exception:  # (a widget not mounted yet)
                pass
            await pilot.pause(0.02)
        else:
            raise AssertionError("the screen did not load")

    return run_before


@pytest.mark.parametrize("size", SIZES)
def test_launcher(snap_compare, scene, size):
    app = make_app(scene)
    loaded = waiting_for(
        lambda app: isinstance(app.screen, LauncherScreen) and app.screen.query_one("#presets", DataTable).row_count
    )
    assert snap_compare(app, terminal_size=SIZES[size], run_before=loaded)


@pytest.mark.parametrize("size", SIZES)
def test_monitor_of_a_pruning_run(snap_compare, scene, size):
    app = make_app(scene, run=scene / "20260101-000000-prune", poll_s=0.05)
    assert snap_compare(app, terminal_size=SIZES[size], run_before=waiting_for(monitor_loaded))


@pytest.mark.parametrize("size", SIZES)
def test_runs_browser(snap_compare, scene, size):
    app = make_app(scene, start="runs", poll_s=0.05)
    listed = waiting_for(
        lambda app: isinstance(app.screen, RunsScreen) and app.screen.query_one(DataTable).row_count == 3
    )
    assert snap_compare(app, terminal_size=SIZES[size], run_before=listed)


@pytest.mark.parametrize("size", SIZES)
def test_compare(snap_compare, scene, size):
    app = make_app(scene, start="runs", poll_s=0.05)

    async def compared(pilot) -> None:
        await waiting_for(lambda app: app.screen.query_one(DataTable).row_count == 3)(pilot)
        await pilot.press("space", "down", "space", "c")
        await waiting_for(lambda app: isinstance(app.screen, CompareScreen) and "baseline" in app.screen.note)(pilot)

    assert snap_compare(app, terminal_size=SIZES[size], run_before=compared)


def test_readme_screenshots_are_snapshots():
    """docs/launcher.svg and docs/monitor.svg (the README's) are the 120x40 snapshots, so they show the
    app as it is (`--snapshot-update`, then `python -m tests.test_snapshots` copies them again)."""
    for doc, snap in README_SHOTS.items():
        assert (DOCS / doc).read_text() == (SNAPSHOTS / snap).read_text(), f"docs/{doc}: copy {snap} again"


if __name__ == "__main__":
    for doc, snap in README_SHOTS.items():
        shutil.copyfile(SNAPSHOTS / snap, DOCS / doc)
        print(f"docs/{doc} <- tests/__snapshots__/test_snapshots/{snap}")
