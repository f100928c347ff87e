"""Runs browser: the runs dir with status and headline figures; open one, compare two, or list a run's
explanation images (`chexui explain`'s default output, RUN/explain) and open them in the system viewer."""

from __future__ import annotations

import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from chexui import runs as runs_mod
from chexui.format import fmt, n_defined, with_ci
from chexui.safe import safe
from chexui.tui.navigation import nav
from engine.labels import LABELS
from engine.sanitize import clean


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("space", "mark", "Mark for compare"),
        Binding("c", "compare", "Compare 2"),
        Binding("x", "explanations", "Explanations"),
        Binding("n", "new", "New run"),
        Binding("r", "reload", "Refresh"),
    ]

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.marked: list[str] = []  # row keys: each run dir's real path (its name may not be printable)
        self.rows: dict[str, dict] = {}

    def compose(self) -> ComposeResult:
        yield Static(safe(f"runs in {self.runs_dir.resolve()}"), id="title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(
            " ", "run", "status", "preset", "world", "epochs", "val (best ep)", "test (95% CI)"
        )
        self.load()
        self.set_interval(3.0, self.load)

    @work(thread=True, exclusive=True)
    def load(self) -> None:
        rows = [{**r.summary(), "dir": str(r.run_dir)} for r in runs_mod.list_runs(self.runs_dir)]
        self.app.call_from_thread(self.show, rows)

    def action_reload(self) -> None:
        self.load()

    def show(self, rows: list[dict]) -> None:
        self.rows = {r["dir"]: r for r in rows}
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear()
        for r in reversed(rows):  # newest first
            table.add_row(
                "*" if r["dir"] in self.marked else " ",
                safe(r["id"]),
                safe(r["status"]),
                safe(r["preset"] or "-"),
                str(r["world_size"] or "-"),
                str(r["epochs"]),
                fmt(r["best_val_auc"]) + (f" ({r['best_epoch']})" if r.get("best_epoch") is not None else ""),
                with_ci(fmt(r["test_auc"]), r.get("test_auc_ci")),
                key=r["dir"],
            )
        if rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    def _current(self) -> str | None:
        """The real path of the run under the cursor."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value

    def action_open(self) -> None:
        run_dir = self._current()
        if run_dir:
            nav(self.app).open_monitor(Path(run_dir))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_mark(self) -> None:
        run_id = self._current()
        if run_id is None:
            return
        if run_id in self.marked:
            self.marked.remove(run_id)
        else:
            self.marked = (self.marked + [run_id])[-2:]
        self.show(list(self.rows.values()))

    def action_compare(self) -> None:
        if len(self.marked) != 2:
            self.notify("mark two runs with space first", severity="warning")
            return
        self.app.push_screen(CompareScreen([Path(r) for r in self.marked]))

    def action_new(self) -> None:
        nav(self.app).open_launcher()

    def action_explanations(self) -> None:
        run_dir = self._current()
        if run_dir:
            self.app.push_screen(ExplanationsScreen(Path(run_dir)))


class ExplanationsScreen(Screen):
    """A run's Grad-CAM images (RUN/explain, from `chexui explain`); enter opens one in the system's
    image viewer. Nothing here needs a viewer: without one the screen says where the file is."""

    BINDINGS = [Binding("enter", "view", "Open in viewer"), Binding("b,escape", "app.pop_screen", "Back")]

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)

    def compose(self) -> ComposeResult:
        yield Static(safe(f"explanations of {self.run_dir.name}"), id="title")
        yield DataTable(id="images", cursor_type="row", zebra_stripes=True)
        yield Static("", id="note")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("image", "kB", "written")
        self.files = explanation_images(self.run_dir)
        for i, f in enumerate(self.files):
            st = f.stat()
            table.add_row(
                safe(f.relative_to(self.run_dir / "explain")),
                f"{st.st_size / 1e3:.0f}",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime)),
                key=str(i),
            )
        note = (
            f"{len(self.files)} images in {self.run_dir / 'explain'}"
            if self.files
            else f"no explanations yet: chexui explain {self.run_dir.name} IMAGE... writes them to "
            f"{self.run_dir / 'explain'}"
        )
        self.query_one("#note", Static).update(safe(note))

    def action_view(self) -> None:
        table = self.query_one(DataTable)
        if table.row_count:
            self.view(self.files[table.cursor_row])

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_view()

    @work(thread=True)
    def view(self, path: Path) -> None:
        opened = open_in_viewer(path)
        self.app.call_from_thread(
            self.notify,
            clean(f"opened {path.name}" if opened else f"no image viewer found; the file is {path}"),
            severity="information" if opened else "warning",
            markup=False,
        )


def explanation_images(run_dir: Path) -> list[Path]:
    """PNGs under RUN/explain, side-by-side figures first, then by name."""
    found = sorted((run_dir / "explain").rglob("*.png")) if (run_dir / "explain").is_dir() else []
    return sorted(found, key=lambda p: (not p.name.endswith("-compare.png"), str(p)))


def open_in_viewer(path: Path) -> bool:
    """Open a file with the desktop's viewer (xdg-open / open / os.startfile); False when there is none.
    The path is passed as one argument, never through a shell."""
    import os
    import shutil
    import subprocess
    import sys

    if sys.platform == "win32":
        os.startfile(str(path))  # noqa: S606 (a file we listed, opened by its associated viewer)
        return True
    opener = shutil.which("open" if sys.platform == "darwin" else "xdg-open")
    if opener is None:
        return False
    subprocess.Popen(
        [opener, str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return True


class CompareScreen(Screen):
    """Per-class test AUROC of two runs side by side, with the paired difference B - A and its 95 % CI
    (patient bootstrap over the saved predictions, in a worker: seconds on an NIH-size split)."""

    BINDINGS = [Binding("b,escape", "app.pop_screen", "Back")]

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = run_dirs

    def compose(self) -> ComposeResult:
        yield Static("per-class test AUROC", id="title")
        yield DataTable(id="compare", cursor_type="none", zebra_stripes=True)
        yield Static("", id="note")
        yield Footer()

    def on_mount(self) -> None:
        self.infos = [runs_mod.load_run(d) for d in self.run_dirs]
        self.show(None)
        self.pair()

    @work(thread=True, exclusive=True)
    def pair(self) -> None:
        from chexui import compare

        df = compare.paired_table(self.infos, [i.id for i in self.infos], 0)
        self.app.call_from_thread(self.show, df)

    def show(self, paired) -> None:
        tests = [i.state.test for i in self.infos]
        table = self.query_one(DataTable)
        table.clear(columns=True)
        table.add_columns("label", *[safe(i.id) for i in self.infos], "B - A (95% CI)")
        diffs = compare_text(paired) if paired is not None and not paired.empty else {}
        for name in list(LABELS) + ["mean"]:
            vals = [(t["auc_mean"] if name == "mean" else t["auc"].get(name)) if t else None for t in tests]
            label = f"mean ({n_defined(tests[0]['auc'])}/{len(LABELS)})" if name == "mean" and tests[0] else name
            table.add_row(label, *[fmt(v) for v in vals], diffs.get(name, "..." if paired is None else "-"))
        if paired is not None:
            from chexui.compare import paired_caption

            self.query_one("#note", Static).update(safe(paired_caption(paired)))


def compare_text(paired) -> dict[str, str]:
    from chexui.compare import paired_display

    return paired_display(paired).iloc[:, 0].to_dict()
