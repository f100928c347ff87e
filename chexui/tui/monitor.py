"""Live run monitor: loss curves, epoch table, memory per rank, log, per-class AUROC, progress, status.

A worker thread follows events.jsonl and logs/engine.log and posts what is new as messages; the screen
folds events into a RunState and redraws at most twice a second, so following a busy run stays cheap.
"""

from __future__ import annotations

import time
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Label, ProgressBar, RichLog, Static
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from chexui import runs as runs_mod
from chexui.format import auc_marks, fmt, hms
from chexui.tui.state import RunState
from engine.events import EventTail, FileTail
from engine.labels import LABELS


PANES = {"status", "progress", "plot!", "aucs", "epochs"}
# which panes an event type changes ("plot" may be deferred, "plot!" may not)
DIRTIES = {
    "progress": {"progress", "plot"},
    "epoch_started": {"progress"},
    "epoch_ended": {"plot!", "aucs", "epochs", "status"},
    "evaluated": {"aucs"},
}


class RunUpdate(Message):
    def __init__(self, events: list[dict], log_lines: list[str], launcher_alive: bool, gone: bool) -> None:
        super().__init__()
        self.events, self.log_lines, self.launcher_alive, self.gone = events, log_lines, launcher_alive, gone


class QuitDialog(ModalScreen[str]):
    """Quitting while a run is live: stop it, or leave it running in the background."""

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label("The run is still going. Stop it, or leave it running in the background?")
            with Horizontal():
                yield Button("Stop the run", id="stop", variant="error")
                yield Button("Leave it running", id="leave", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def choose(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)


class MonitorScreen(Screen):
    BINDINGS = [Binding("s", "stop_run", "Stop run"), Binding("b", "back", "Runs"),
                Binding("q", "quit_app", "Quit")]

    def __init__(self, run_dir: Path, poll_s: float = 0.25) -> None:
        super().__init__()
        self.run_dir, self.poll_s = Path(run_dir), poll_s
        self.state = RunState(run_id=self.run_dir.name)
        self.launcher_alive = False
        self.gone = False
        self._dirty = set(PANES)  # panes to redraw at the next tick
        self._plot_drawn = 0.0

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield ProgressBar(id="progress", show_eta=False)
        with Horizontal(id="top"):
            yield PlotextPlot(id="loss")
            yield DataTable(id="aucs", cursor_type="none", zebra_stripes=True)
        with Horizontal(id="bottom"):
            yield DataTable(id="epochs", cursor_type="none")
            with Vertical(id="side"):
                yield Static(id="memory")
                yield RichLog(id="log", max_lines=500, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#aucs", DataTable).add_columns("label", "AUROC")
        self.query_one("#epochs", DataTable).add_columns("ep", "train", "val", "AUC", "LR", "time", "img/s")
        self.query_one("#loss", PlotextPlot).border_title = "loss"
        self.set_interval(0.5, self.redraw)
        self.follow()

    # ------------------------------------------------------------ data in (worker thread)
    @work(thread=True, exclusive=True, group="follow")
    def follow(self) -> None:
        worker = get_current_worker()
        events = EventTail(self.run_dir / "events.jsonl")
        log = FileTail(self.run_dir / "logs" / "engine.log")
        last_alive_check, alive = 0.0, False
        while not worker.is_cancelled:
            now = time.monotonic()
            if now - last_alive_check > 2.0:
                alive, last_alive_check = runs_mod.launcher_process(self.run_dir) is not None, now
            gone = not self.run_dir.exists()
            new, lines = events.poll(), log.lines()
            if new or lines or alive != self.launcher_alive or gone != self.gone:
                self.post_message(RunUpdate(new, lines, alive, gone))
            if gone:
                return
            time.sleep(self.poll_s)

    def on_run_update(self, msg: RunUpdate) -> None:
        for e in msg.events:
            self.state.apply(e)
            self._dirty |= DIRTIES.get(e.get("type"), {"status"})
        if (msg.launcher_alive, msg.gone) != (self.launcher_alive, self.gone):
            self._dirty.add("status")
        self.launcher_alive, self.gone = msg.launcher_alive, msg.gone
        if msg.log_lines:
            self.query_one("#log", RichLog).write("\n".join(msg.log_lines))

    # ------------------------------------------------------------ data down (redraw)
    def status_text(self) -> str:
        st = self.state
        status = st.status
        if self.gone:
            status = "run directory deleted"
        elif status == "running" and not self.launcher_alive and st.events:
            status = "engine ended without finishing (failed)"
        parts = [f"[b]{st.run_id}[/b]", st.preset or "-", st.arch, f"world {st.world_size or '-'}",
                 st.device or "-", f"elapsed {hms(st.elapsed_s())}", f"ETA {hms(st.eta_s())}", f"[b]{status}[/b]"]
        text = " | ".join(p for p in parts if p)
        if st.errors:
            text += f"\n[red]error: {st.errors[-1]}[/red]"
        return text

    def redraw(self) -> None:
        """Redraw only the panes whose data changed; the running-loss curve at most every 2 s."""
        st, now = self.state, time.monotonic()
        if st.status == "running" and self.launcher_alive and now - getattr(self, "_clock", 0) > 1.0:
            self._clock = now
            self._dirty.add("status")  # elapsed and ETA move on
        if "plot" in self._dirty and "plot!" not in self._dirty and now - self._plot_drawn < 2.0:
            self._dirty.discard("plot")  # a new running-loss point can wait; an epoch cannot
            self._plot_pending = True
        elif getattr(self, "_plot_pending", False) and now - self._plot_drawn >= 2.0:
            self._dirty.add("plot")
        dirty, self._dirty = self._dirty, set()
        if "status" in dirty:
            self.query_one("#status", Static).update(self.status_text())
        if "progress" in dirty and st.steps:
            self.query_one("#progress", ProgressBar).update(total=st.steps, progress=st.step)
        if dirty & {"plot", "plot!"}:
            self._plot_drawn, self._plot_pending = now, False
            self._draw_loss()
        if "aucs" in dirty:
            self._draw_aucs()
        if "epochs" in dirty:
            self._draw_epochs()
            mem = " ".join(f"r{i}:{m:.0f}" for i, m in enumerate(st.memory_mb))
            self.query_one("#memory", Static).update(f"memory MB/rank {mem or '-'}")

    def _draw_loss(self) -> None:
        plot = self.query_one("#loss", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        st = self.state
        if st.running_loss:
            xs, ys = zip(*st.running_loss[-400:])
            plt.plot(list(xs), list(ys), label="running", marker="dot")
        if st.epochs:
            ep = [e["epoch"] for e in st.epochs]
            plt.plot(ep, [e["train_loss"] for e in st.epochs], label="train", marker="hd")
            plt.plot(ep, [e["val_loss"] for e in st.epochs], label="val", marker="hd")
        plt.xlabel("epoch")
        plot.refresh()

    def _draw_aucs(self) -> None:
        table = self.query_one("#aucs", DataTable)
        st = self.state
        aucs, title = (st.test_auc, "test AUROC") if st.test_auc else (st.val_auc, "val AUROC")
        table.border_title = title
        table.clear()
        marks = auc_marks(aucs)
        for name in LABELS:
            v = aucs.get(name)
            mark = {"best": " ▲", "worst": " ▼"}.get(marks.get(name), "")
            table.add_row(name, ("null" if v is None and aucs else fmt(v)) + mark)
        mean = st.test_auc_mean if st.test_auc else (st.epochs[-1]["val_auc_mean"] if st.epochs else None)
        table.add_row("mean", fmt(mean))

    def _draw_epochs(self) -> None:
        table = self.query_one("#epochs", DataTable)
        if self.state.has_sparsity and "sparsity" not in [str(c.label) for c in table.columns.values()]:
            table.add_column("sparsity")
        table.clear()
        for e in self.state.epochs:
            row = [str(e["epoch"]), fmt(e["train_loss"]), fmt(e["val_loss"]), fmt(e.get("val_auc_mean")),
                   f"{e['lr']:.1e}", f"{e['epoch_time_s']:.1f}s", f"{e['images_per_s']:.0f}"]
            if len(table.columns) > 7:
                row.append(fmt(e.get("sparsity"), ".3f"))
            table.add_row(*row)

    # ------------------------------------------------------------ keys
    @work(thread=True, group="stop")
    def _stop(self) -> None:
        try:
            runs_mod.stop_run(self.run_dir)
            self.app.call_from_thread(self.notify, "run stopped")
        except Exception as e:  # not running any more, or did not stop in time
            self.app.call_from_thread(self.notify, str(e), severity="warning")

    def action_stop_run(self) -> None:
        if self.launcher_alive:
            self.notify("stopping the run (a checkpoint is written first)")
            self._stop()
        else:
            self.notify("the run is not running", severity="warning")

    def action_back(self) -> None:
        from chexui.tui.runs_browser import RunsScreen
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.app.switch_screen(RunsScreen(self.app.runs_dir))

    def action_quit_app(self) -> None:
        if not self.launcher_alive:
            self.app.exit()
            return

        def done(choice: str | None) -> None:
            if choice == "stop":
                runs_mod.stop_run(self.run_dir, timeout=0)
                self.app.exit(message=f"stopping {self.run_dir.name}")
            elif choice == "leave":
                self.app.exit(message=f"{self.run_dir.name} keeps running: chexui watch {self.run_dir.name}")
        self.app.push_screen(QuitDialog(), done)
