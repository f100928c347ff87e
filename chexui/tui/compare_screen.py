"""Per-class test AUROC of the marked runs side by side, and each one's paired difference from the first
(the baseline) with its 95 % CI and p: chexui compare's tables (chexui/compare.py), computed in a worker
(a patient bootstrap over the saved predictions: seconds on an NIH-size split). Runs that differ only by
train.seed are pooled into arms: their mean, and a bootstrap over patients and seeds."""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from chexui import runs as runs_mod
from chexui.safe import safe
from chexui.tui.navigation import still_shown
from chexui.tui.widgets.fitted_table import FittedTable
from engine.labels import LABELS


class CompareScreen(Screen):
    BINDINGS = [Binding("b,escape", "app.pop_screen", "Back")]
    HELP = """\\
## Compare: the marked runs' test AUROC

| key | |
|---|---|
| arrows, page keys | scroll the table |
| `b` `escape` | back to the runs browser |

One column per run (or arm: runs that differ only by `train.seed`, pooled: their mean ± SD over the
seeds), then, for each run or arm after the first, its paired difference from the first on the same test
patients: the difference, its 95 % CI and two-sided p from a patient bootstrap over the saved test
predictions (patients, then seeds within each arm, for arms); `*` where the Holm-adjusted p is at most
0.05. The same tables as `chexui compare RUN...` (also its time and storage tables).
"""

    def __init__(self, run_dirs: list[Path]) -> None:
        super().__init__()
        self.run_dirs = run_dirs

    def compose(self) -> ComposeResult:
        yield Static("per-class test AUROC", id="title")
        yield FittedTable(id="compare", cursor_type="none", zebra_stripes=True)
        with VerticalScroll(id="note-box"):
            yield Static("", id="note")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(FittedTable).fill(
            ["label", *(safe(d.name) for d in self.run_dirs)],
            [[name, *("..." for _ in self.run_dirs)] for name in [*LABELS, "mean"]],
        )
        self.note = "pairing the runs' test predictions (patient bootstrap) ..."
        self.query_one("#note", Static).update(self.note)
        self.query_one(FittedTable).focus()  # arrows and page keys scroll it
        self.pair()

    @work(thread=True, exclusive=True)
    def pair(self) -> None:
        from chexui import compare

        # the runs' events are read here too, off the event loop (an NIH-size run's are megabytes)
        tables = compare.tables([runs_mod.load_run(d) for d in self.run_dirs])
        self.app.call_from_thread(self.show, tables)

    def show(self, tables: dict) -> None:
        from chexui.compare import auroc_caption, auroc_display, paired_caption, paired_display

        if not still_shown(self, FittedTable, "#note"):  # (the pairing thread's tables)
            return
        auroc, paired = tables["auroc"], tables.get("paired")
        shown = auroc_display(auroc)  # each run with its CI, or each arm's mean ± SD over seeds; the reference
        diffs = paired_display(paired) if paired is not None and not paired.empty else None
        diff_cols = list(diffs.columns) if diffs is not None else []
        headers: list[str | Text] = ["label", *(safe(c) for c in shown.columns)]
        headers += [safe(f"{c} - baseline") for c in diff_cols]
        rows = [
            [
                label,
                *(safe(shown.at[label, c]) for c in shown.columns),
                *(safe(diffs.at[label, c]) for c in diff_cols if diffs is not None and label in diffs.index),
            ]
            for label in shown.index
        ]
        width = len(headers)
        self.query_one(FittedTable).fill(headers, [r + [""] * (width - len(r)) for r in rows])
        notes = [auroc_caption(auroc)] + ([paired_caption(paired)] if paired is not None else [])
        self.note = "\n".join(notes)
        self.query_one("#note", Static).update(safe(self.note))
