"""Runs browser: every run of the runs dir with its status and headline figures; sort by any column,
filter, open one, compare the marked ones, list a run's explanations.

Built for hundreds of runs: a worker refreshes a `RunIndex` every few seconds (a stat per run; only
runs whose files changed are read again) and the table is rebuilt only when a row, the sort or the
filter changed, so an idle browser costs next to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Static

from chexui import runs as runs_mod
from chexui.format import fmt, human_bytes, with_ci
from chexui.safe import safe
from chexui.tui.navigation import nav, still_shown

REFRESH_S = 3.0


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[dict[str, Any]], str]  # the cell (outside text goes through `safe` when shown)
    key: Callable[[dict[str, Any]], Any]  # what it sorts by (None last)
    field: str = ""  # filter name: `field:value` keeps the rows whose cell contains value


def _best_val(r: dict) -> str:
    return fmt(r["best_val_auc"]) + (f" ({r['best_epoch']})" if r.get("best_epoch") is not None else "")


def _smallest(r: dict) -> str:
    a = r.get("smallest_artifact")
    return f"{human_bytes(a['bytes'])} {a['kind']}" if a else "-"


COLUMNS = [
    Column("run", lambda r: r["id"], lambda r: r["id"], "run"),
    Column("status", lambda r: r["status"], lambda r: r["status"], "status"),
    Column("preset", lambda r: r["preset"] or "-", lambda r: r["preset"], "preset"),
    Column("arch", lambda r: r["arch"] or "-", lambda r: r["arch"], "arch"),
    Column("world", lambda r: str(r["world_size"] or "-"), lambda r: r["world_size"]),
    Column("epochs", lambda r: str(r["epochs"]), lambda r: r["epochs"]),
    Column("val AUROC (ep)", _best_val, lambda r: r["best_val_auc"]),
    Column("test AUROC (95% CI)", lambda r: with_ci(fmt(r["test_auc"]), r.get("test_auc_ci")), lambda r: r["test_auc"]),
    Column("sparsity", lambda r: fmt(r.get("sparsity"), ".3f"), lambda r: r.get("sparsity")),
    Column("smallest file", _smallest, lambda r: (r.get("smallest_artifact") or {}).get("bytes")),
]
FIELDS = {c.field: c for c in COLUMNS if c.field}


def matches(row: dict, query: str) -> bool:
    """A filter: words that must all occur in the row (case-insensitive); `status:`, `arch:`, `preset:`
    or `run:` before a word looks in that column only."""
    cells = {c.field or c.header: c.text(row).lower() for c in COLUMNS}
    for word in query.lower().split():
        field, _, value = word.partition(":")
        if value and field in FIELDS:
            if value not in cells[field]:
                return False
        elif not any(word in cell for cell in cells.values()):
            return False
    return True


def ordered(rows: list[dict], column: int | None, descending: bool) -> list[dict]:
    """Newest first; or by a column (rows without a value last, whatever the direction)."""
    if column is None:
        return sorted(rows, key=lambda r: r["dir"], reverse=True)  # run dirs start with their start time
    key = COLUMNS[column].key
    have = sorted((r for r in rows if key(r) is not None), key=key, reverse=descending)
    return have + [r for r in rows if key(r) is None]


class RunsScreen(Screen):
    BINDINGS = [
        Binding("enter", "open", "Open"),
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare marked"),
        Binding("s", "sort", "Sort"),
        Binding("S", "reverse", "Reverse", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("x", "explanations", "Explanations"),
        Binding("n", "new", "New run"),
        Binding("r", "reload", "Refresh", show=False),
    ]
    HELP = """\\
## Runs browser: every run in the runs dir

| key | |
|---|---|
| `enter` | open the run's monitor (live, or the finished run replayed from its events) |
| `space` | mark the run under the cursor (or unmark it) |
| `c` | compare the marked runs: per-class test AUROC and paired differences with 95 % CIs |
| `s` / `S` | sort by the next column / reverse the order (or click a column's header) |
| `/` | filter: words that must all occur; `status:` `arch:` `preset:` `run:` before a word look in that column only |
| `escape` | clear the filter |
| `x` | the run's Grad-CAM explanations |
| `n` | a new run (the launcher) |
| `r` | read the runs dir again now (it is read every 3 s anyway) |

**Columns**: the run's id (its directory), status (running while its launcher process is alive),
preset, architecture, world size, epochs run, the mean validation AUROC of the epoch it ships (its best
checkpoint, by validation loss) with that epoch, the mean test AUROC of what it ships with its 95 %
patient-bootstrap CI, the sparsity of its weights (pruning runs), and its smallest exported file
(`RUN/export`). Every figure comes from the run's `events.jsonl`.
"""

    def __init__(self, runs_dir: Path) -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.index = runs_mod.RunIndex(self.runs_dir)
        self.marked: list[str] = []  # row keys: each run dir's real path (its name may not be printable)
        self.rows: dict[str, dict] = {}
        self.sort_column: int | None = None
        self.descending = True
        self.query_text = ""
        self._shown: list[tuple] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="title")
        yield Input(placeholder="filter: words, status:..., arch:..., preset:..., run:...", id="filter")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(" ", *(c.header for c in COLUMNS))
        self.query_one(DataTable).focus()
        self.show_title()
        self.load()
        self.set_interval(REFRESH_S, self.load)

    @work(thread=True, exclusive=True, group="runs")
    def load(self, force: bool = False) -> None:
        if self.index.refresh() or force:
            rows = self.index.rows
            self.app.call_from_thread(self.show, rows)

    def action_reload(self) -> None:
        self.load(force=True)

    # ------------------------------------------------------------ the table
    def show(self, rows: list[dict] | None = None) -> None:
        if not still_shown(self, "#title", DataTable):  # (rows from the loader thread)
            return
        if rows is not None:
            self.rows = {r["dir"]: r for r in rows}
        shown = [
            r
            for r in ordered(list(self.rows.values()), self.sort_column, self.descending)
            if matches(r, self.query_text)
        ]
        cells = [(r["dir"], "*" if r["dir"] in self.marked else " ", *(c.text(r) for c in COLUMNS)) for r in shown]
        self.show_title(len(shown))
        if cells == self._shown:  # nothing to redraw
            return
        self._shown = cells
        table = self.query_one(DataTable)
        current = self._current()
        table.clear()
        for key, mark, *texts in cells:
            table.add_row(mark, *(safe(t) for t in texts), key=key)
        if cells:
            keys = [c[0] for c in cells]
            table.move_cursor(row=keys.index(current) if current in keys else 0)

    def show_title(self, n: int | None = None) -> None:
        parts = [f"{len(self.rows) if n is None else n} of {len(self.rows)} runs in {display_path(self.runs_dir)}"]
        if self.sort_column is not None:
            parts.append(f"sorted by {COLUMNS[self.sort_column].header} {'↓' if self.descending else '↑'}")
        if self.query_text:
            parts.append(f"filter: {self.query_text}")
        if self.marked:
            parts.append(f"{len(self.marked)} marked")
        self.query_one("#title", Static).update(safe(" · ".join(parts)))

    def _current(self) -> str | None:
        """The real path of the run under the cursor."""
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value

    # ------------------------------------------------------------ sort and filter
    def action_sort(self) -> None:
        self.sort_column = 0 if self.sort_column is None else (self.sort_column + 1) % len(COLUMNS)
        self.show()

    def action_reverse(self) -> None:
        self.descending = not self.descending
        self.show()

    @on(DataTable.HeaderSelected)
    def header_clicked(self, event: DataTable.HeaderSelected) -> None:
        column = event.column_index - 1  # (the mark column first)
        if column < 0:
            return
        if column == self.sort_column:
            self.descending = not self.descending
        self.sort_column = column
        self.show()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value.strip()
        self.show()

    @on(Input.Submitted, "#filter")
    def filter_done(self) -> None:
        self.query_one(DataTable).focus()

    def key_escape(self) -> None:
        box = self.query_one("#filter", Input)
        if box.display:
            box.value, box.display = "", False
            self.query_one(DataTable).focus()

    # ------------------------------------------------------------ actions
    def action_open(self) -> None:
        run_dir = self._current()
        if run_dir:
            nav(self.app).open_monitor(Path(run_dir))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open()

    def action_mark(self) -> None:
        run_dir = self._current()
        if run_dir is None:
            return
        self.marked = [m for m in self.marked if m != run_dir] if run_dir in self.marked else self.marked + [run_dir]
        self.show()

    def action_compare(self) -> None:
        if len(self.marked) < 2:
            self.notify("mark two runs or more with space first (the first marked is the baseline)", severity="warning")
            return
        nav(self.app).open_compare([Path(r) for r in self.marked])

    def action_new(self) -> None:
        nav(self.app).open_launcher()

    def action_explanations(self) -> None:
        run_dir = self._current()
        if run_dir:
            nav(self.app).open_explanations(Path(run_dir))


def display_path(path: Path) -> str:
    """A path as a user reads it: relative to the current directory when inside it, else to home (~)."""
    path = path.resolve()
    for base, prefix in ((Path.cwd(), "."), (Path.home(), "~")):
        try:
            return str(Path(prefix) / path.relative_to(base))
        except ValueError:
            continue
    return str(path)
