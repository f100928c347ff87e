"""Live run monitor: loss curves, epoch table, memory per rank, log, per-class AUROC, progress, status.

A worker thread follows events.jsonl and logs/engine.log and posts what is new as messages (events
flow up); the screen folds them into a RunState and hands each widget its slice of it through a
reactive attribute (data flows down). A widget redraws when its data changed; the loss plot at most
every 2 s for running-loss points (an epoch's point is drawn at once), so following a busy run stays
cheap.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Button, DataTable, Footer, Label, ProgressBar, RichLog, Static
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from chexui import runs as runs_mod
from chexui.format import auroc_rows, epoch_time_text, fmt, hms, mean_text
from chexui.runstate import RunState
from chexui.safe import joined, safe
from chexui.tui.navigation import nav
from engine.events import EventTail, FileTail
from engine.rundir import ENGINE_LOG, EVENTS_FILE
from engine.sanitize import clean

PLOT_EVERY_S = 2.0  # the running-loss curve redraws at most this often


class StatusLine(Static):
    text: reactive[Text] = reactive(Text)

    def watch_text(self, text: Text) -> None:
        self.update(text)


class MemoryLine(Static):
    memory_mb: reactive[tuple] = reactive(tuple)

    def watch_memory_mb(self, mem: tuple) -> None:
        self.update("memory MB/rank " + (" ".join(f"r{i}:{m:.0f}" for i, m in enumerate(mem)) or "-"))


class LossPlot(PlotextPlot):
    """Running loss and per-epoch train/val loss. `curves` = (running points, epoch rows)."""

    curves: reactive[tuple] = reactive(lambda: ((), ()))

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._drawn_at, self._epochs_drawn = 0.0, -1
        self._timer: Timer | None = None

    def watch_curves(self, curves: tuple) -> None:
        wait = PLOT_EVERY_S - (time.monotonic() - self._drawn_at)
        if len(curves[1]) != self._epochs_drawn or wait <= 0:
            self._draw()
        elif self._timer is None:  # a new running-loss point can wait; it is drawn with the next one
            self._timer = self.set_timer(wait, self._draw)

    def _draw(self) -> None:
        running, epochs = self.curves
        self._drawn_at, self._epochs_drawn, self._timer = time.monotonic(), len(epochs), None
        plt = self.plt
        plt.clear_data()
        if running:
            xs, ys = zip(*running[-400:])
            plt.plot(list(xs), list(ys), label="running", marker="dot")
        if epochs:
            ep = [e["epoch"] for e in epochs]
            plt.plot(ep, [e["train_loss"] for e in epochs], label="train", marker="hd")
            plt.plot(ep, [e["val_loss"] for e in epochs], label="val", marker="hd")
        plt.xlabel("epoch")
        self.refresh()


class AucTable(DataTable):
    """Per-class AUROC with the best and worst marked, and the 95 % CIs of a test evaluation.
    `aucs` = (title, an `evaluated` event or {"auc": {label: auc}, "auc_mean": mean})."""

    aucs: reactive[tuple] = reactive(lambda: ("val AUROC", {"auc": {}, "auc_mean": None}))

    def watch_aucs(self, value: tuple) -> None:
        title, ev = value
        at = ev.get("at_threshold")  # a test evaluation at the operating points chosen on validation
        self.border_title = safe(title + (f" · calls at {ev.get('operating_point')} thresholds" if at else ""))
        self.clear(columns=True)
        self.add_columns("label", "AUROC", "95% CI", *(("thr", "sens", "spec") if at else ()))
        rows, mean = auroc_rows(ev, digits=2)
        for r in rows:
            self.add_row(r.label, r.auroc + {"best": " ▲", "worst": " ▼"}.get(r.mark, ""), r.ci, *(r.at or ()))
        self.add_row(f"mean ({mean.label})" if mean.label else "mean", mean.auroc, mean.ci, *(mean.at or ()))


class EpochTable(DataTable):
    """One row per epoch; a sparsity column once a pruning run reports one."""

    epochs: reactive[tuple] = reactive(tuple)

    def on_mount(self) -> None:
        self.add_columns("ep", "train", "val", "AUC", "LR", "time", "img/s")

    def watch_epochs(self, epochs: tuple) -> None:
        pruned = any(e.get("sparsity") is not None for e in epochs)
        if pruned and len(self.columns) == 7:
            self.add_column("sparsity")
        self.clear()
        for e in epochs:
            row = [
                str(e["epoch"]),
                fmt(e["train_loss"]),
                fmt(e["val_loss"]),
                mean_text(e.get("val_auc_mean"), e.get("val_auc")),
                f"{e['lr']:.1e}",
                epoch_time_text(e),
                f"{e['images_per_s']:.0f}",
            ]
            if len(self.columns) > 7:
                row.append(fmt(e.get("sparsity"), ".3f"))
            self.add_row(*row)


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
    BINDINGS = [Binding("s", "stop_run", "Stop run"), Binding("b", "back", "Runs"), Binding("q", "quit_app", "Quit")]

    def __init__(self, run_dir: Path, poll_s: float = 0.25) -> None:
        super().__init__()
        self.run_dir, self.poll_s = Path(run_dir), poll_s
        self.state = RunState(run_id=self.run_dir.name)
        self.launcher_alive = False
        self.gone = False

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield ProgressBar(id="progress", show_eta=False)
        with Horizontal(id="top"):
            yield LossPlot(id="loss")
            yield AucTable(id="aucs", cursor_type="none", zebra_stripes=True)
        with Horizontal(id="bottom"):
            yield EpochTable(id="epochs", cursor_type="none")
            with Vertical(id="side"):
                yield MemoryLine(id="memory")
                yield RichLog(id="log", max_lines=500, wrap=False, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LossPlot).border_title = "loss"
        self.set_interval(1.0, self.show_status)  # elapsed time and ETA move on
        self.push_down()
        self.follow()

    # ------------------------------------------------------------ data in (worker thread)
    @work(thread=True, exclusive=True, group="follow")
    def follow(self) -> None:
        worker = get_current_worker()
        events = EventTail(self.run_dir / EVENTS_FILE)
        log = FileTail(self.run_dir / ENGINE_LOG)
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
        self.launcher_alive, self.gone = msg.launcher_alive, msg.gone
        if msg.log_lines:
            self.query_one("#log", RichLog).write(safe("\n".join(msg.log_lines)))
        self.push_down()

    # ------------------------------------------------------------ data down
    def push_down(self) -> None:
        """Each widget gets its slice of the state; reactive attributes redraw only what changed."""
        st = self.state
        self.show_status()
        if st.steps:
            self.query_one(ProgressBar).update(total=st.steps, progress=st.step)
        self.query_one(LossPlot).curves = (tuple(st.running_loss), tuple(st.epochs))
        self.query_one(AucTable).aucs = (
            ("test AUROC", st.test)
            if st.test
            else ("val AUROC", {"auc": st.val_auc, "auc_mean": st.epochs[-1]["val_auc_mean"] if st.epochs else None})
        )
        self.query_one(EpochTable).epochs = tuple(st.epochs)
        self.query_one(MemoryLine).memory_mb = tuple(st.memory_mb)

    def show_status(self) -> None:
        self.query_one(StatusLine).text = self.status_text()

    def status_text(self) -> Text:
        st = self.state
        status = st.status
        if self.gone:
            status = "run directory deleted"
        elif status == "running" and not self.launcher_alive and st.events:
            status = "engine ended without finishing (failed)"
        # text from the run is plain text: a "[" in a run name or an error is not markup
        parts = [
            safe(st.run_id, "bold"),
            safe(st.preset or "-"),
            safe(st.arch),
            f"world {st.world_size or '-'}",
            safe(st.device or "-"),
            f"elapsed {hms(st.elapsed_s())}",
            f"ETA {hms(st.eta_s())}",
            safe(status, "bold"),
        ]
        text = joined(*(p for p in parts if str(p)))  # type: ignore[arg-type]  # (Text and str parts)
        if st.errors:
            text.append("\n").append_text(safe(f"error: {st.errors[-1]}", "red"))
        return text

    # ------------------------------------------------------------ keys
    @work(thread=True, group="stop")
    def _stop(self) -> None:
        try:
            runs_mod.stop_run(self.run_dir)
            self.app.call_from_thread(self.notify, "run stopped")
        except Exception as e:  # not running any more, or did not stop in time
            self.app.call_from_thread(self.notify, clean(str(e)), severity="warning", markup=False)

    def action_stop_run(self) -> None:
        if self.launcher_alive:
            self.notify("stopping the run (a checkpoint is written first)")
            self._stop()
        else:
            self.notify("the run is not running", severity="warning")

    def action_back(self) -> None:
        nav(self.app).open_runs()

    def action_quit_app(self) -> None:
        if not self.launcher_alive:
            self.app.exit()
            return

        def done(choice: str | None) -> None:
            if choice == "stop":
                runs_mod.stop_run(self.run_dir, timeout=0)
                self.app.exit(message=safe(f"stopping {self.run_dir.name}"))
            elif choice == "leave":
                self.app.exit(message=safe(f"{self.run_dir.name} keeps running: chexui watch {self.run_dir.name}"))

        self.app.push_screen(QuitDialog(), done)
