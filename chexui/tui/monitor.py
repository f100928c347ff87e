"""Live run monitor: loss curves, per-class AUROC, epoch table, memory per rank, the engine's log,
progress and status.

A worker thread follows events.jsonl and logs/engine.log and posts what is new as messages (events
flow up); the screen folds them into a RunState and hands each widget its slice of it through a
reactive attribute (data flows down). Keys 1-4 show one pane full-screen (escape: all panes), so at
80x24 every column of every pane is reachable.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, ProgressBar
from textual.worker import get_current_worker

from chexui import runs as runs_mod
from chexui import slurm_jobs
from chexui.format import hms
from chexui.runstate import RunState
from chexui.safe import joined, safe
from chexui.tui.navigation import nav
from chexui.tui.quit_dialog import QuitDialog
from chexui.tui.widgets.auc_table import AucTable
from chexui.tui.widgets.epoch_table import EpochTable
from chexui.tui.widgets.fitted_table import FittedTable
from chexui.tui.widgets.log_pane import LogPane
from chexui.tui.widgets.loss_plot import LossPlot
from chexui.tui.widgets.lr_plot import LRPlot
from chexui.tui.widgets.memory_line import MemoryLine
from chexui.tui.widgets.status_line import StatusLine
from engine.events import EventTail, FileTail
from engine.rundir import ENGINE_LOG, EVENTS_FILE
from engine.sanitize import clean

PANES = {"1": "loss", "2": "aucs", "3": "epochs", "4": "log"}  # key -> the pane it shows full-screen


class RunUpdate(Message):
    def __init__(
        self, events: list[dict], log_lines: list[str], launcher_alive: bool, gone: bool, job: str | None = None
    ) -> None:
        super().__init__()
        self.events, self.log_lines, self.launcher_alive, self.gone = events, log_lines, launcher_alive, gone
        self.job = job  # a SLURM run's job as the scheduler reports it ("SLURM job 7: PENDING (Priority)")


class MonitorScreen(Screen):
    BINDINGS = [
        Binding("s", "stop_run", "Stop run"),
        Binding("b", "back", "Runs"),
        Binding("x", "explanations", "Explanations", show=False),
        Binding("q", "quit_app", "Quit"),
        *(Binding(k, f"pane('{p}')", f"{p} full-screen", show=False) for k, p in PANES.items()),
    ]
    HELP = """\
## Monitor: one run, live or finished

| key | |
|---|---|
| `1` `2` `3` `4` | show the loss plot, the AUROC table, the epoch table or the engine log full-screen |
| `escape` | back to all panes |
| arrows, page keys | scroll the pane that has focus (`tab` moves the focus) |
| `s` | stop the run (it writes a checkpoint first; `chexui run --resume RUN` goes on) |
| `x` | the run's Grad-CAM explanations (`chexui explain`) |
| `b` | the runs browser |
| `q` | quit (asks first when this screen started a run that is still going) |
| `ctrl+p` | command palette: every action, and open any run by name |

**Status line**: run id, preset, architecture, world size (processes), device, elapsed time and ETA
(from the steady epoch time), status; the last error of the run under it.

**loss**: the running training loss (dots, from `progress` events) and each epoch's training and
validation loss (from `epoch_ended`).

**AUROC**: per-class AUROC of the validation set after each epoch, then of the test set once the run
tested its best checkpoint (the model it ships): ▲ best, ▼ worst label, the 95 %
confidence interval of a patient bootstrap over the test predictions, and the threshold, sensitivity
and specificity at the operating points chosen on validation. The mean row counts the labels it covers.

**epochs**: losses, mean validation AUROC (labels covered), learning rate, epoch time, training images
per second over all processes, and the compression method's own columns (sparsity of a pruning run, the
state of a QAT run's observers).

**memory**: peak GPU memory per rank on CUDA (RSS on the CPU) and the mean GPU utilisation per rank
over the last epoch (CUDA with nvidia-ml-py).

**log**: the engine's log (`RUN/logs/engine.log`), wrapped at the pane's width. Every figure here comes
from `RUN/events.jsonl`, the run's event stream.
"""

    def __init__(self, run_dir: Path, poll_s: float = 0.25) -> None:
        super().__init__()
        self.run_dir, self.poll_s = Path(run_dir), poll_s
        self.state = RunState(run_id=self.run_dir.name)
        self.launcher_alive = False
        self.gone = False
        self.job: str | None = None

    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield ProgressBar(id="progress", show_eta=False)
        with Horizontal(id="top"):
            yield LossPlot(id="loss")
            yield LRPlot(id="lr-curve-run")  # (an LR range test's run: its curve in the loss pane's place)
            yield AucTable(id="aucs", cursor_type="none", zebra_stripes=True)
        with Horizontal(id="bottom"):
            yield EpochTable(id="epochs", cursor_type="none")
            with Vertical(id="side"):
                yield MemoryLine(id="memory")
                yield LogPane(id="log")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(LossPlot).border_title = "loss"
        self.query_one(LRPlot).border_title = "LR range test"
        self.query_one(EpochTable).border_title = "epochs"
        self.query_one(LogPane).border_title = "engine log"
        self.set_interval(1.0, self.show_status)  # elapsed time and ETA move on
        self.push_down()
        self.follow()

    # ------------------------------------------------------------ data in (worker thread)
    @work(thread=True, exclusive=True, group="follow")
    def follow(self) -> None:
        worker = get_current_worker()
        events = EventTail(self.run_dir / EVENTS_FILE)
        log = FileTail(self.run_dir / ENGINE_LOG)
        last_alive_check, alive, job_id, job = 0.0, False, None, None
        while not worker.is_cancelled:
            new, lines = events.poll(), log.lines()
            job_id = job_id or next((str(e["job_id"]) for e in new if e["type"] == "slurm_submitted"), None)
            now = time.monotonic()
            if now - last_alive_check > 2.0:
                (alive, job), last_alive_check = self.engine_alive(job_id), now
            gone = not self.run_dir.exists()
            if new or lines or alive != self.launcher_alive or gone != self.gone or job != self.job:
                self.post_message(RunUpdate(new, lines, alive, gone, job))
            if gone:
                return
            time.sleep(self.poll_s)

    def engine_alive(self, slurm_job: str | None) -> tuple[bool, str | None]:
        """Whether the run may still be going: its launcher on this machine, or (a run submitted with
        --slurm, whose launcher runs on a node) its job, as the scheduler reports it; and that job's state."""
        if slurm_job is None:
            return runs_mod.launcher_process(self.run_dir) is not None, None
        job = slurm_jobs.own_job(slurm_job, self.run_dir)
        alive = job is not None and job.active or runs_mod.launcher_process(self.run_dir) is not None
        return alive, job.describe() if job is not None else None

    def on_run_update(self, msg: RunUpdate) -> None:
        for e in msg.events:
            self.state.apply(e)
        self.launcher_alive, self.gone, self.job = msg.launcher_alive, msg.gone, msg.job
        if msg.log_lines:
            self.query_one(LogPane).add_lines(msg.log_lines)
        self.push_down()

    # ------------------------------------------------------------ data down
    def push_down(self) -> None:
        """Each widget gets its slice of the state; reactive attributes redraw only what changed."""
        st = self.state
        self.show_status()
        if st.steps:
            self.query_one(ProgressBar).update(total=st.steps, progress=st.step)
        if st.is_lr_find:
            self.query_one(LossPlot).display, self.query_one(LRPlot).display = False, True
            self.query_one(LRPlot).curve = (tuple(st.lr_curve), st.lr_suggested)
        self.query_one(LossPlot).curves = (tuple(st.running_loss), tuple(st.epochs))
        self.query_one(AucTable).aucs = (
            ("test AUROC", st.test)
            if st.test
            else ("val AUROC", {"auc": st.val_auc, "auc_mean": st.epochs[-1]["val_auc_mean"] if st.epochs else None})
        )
        self.query_one(EpochTable).epochs = tuple(st.epochs)
        self.query_one(MemoryLine).usage = (tuple(st.memory_mb), tuple(st.gpu_util))

    def on_resize(self, event: Resize) -> None:
        for table in self.query(FittedTable):
            table.fit(event.size.width)

    def watch_maximized(self) -> None:  # a pane shown full-screen, or all panes again
        for table in self.query(FittedTable):
            table.fit(self.size.width)

    def show_status(self) -> None:
        self.query_one(StatusLine).text = self.status_text()

    def status_text(self) -> Text:
        st = self.state
        status = st.status
        if self.gone:
            status = "run directory deleted"
        elif self.job is not None and (status == "running" or "PENDING" in self.job):
            status = self.job  # a SLURM run: the scheduler's word (pending, requeued, running on which nodes)
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

    def action_pane(self, pane: str) -> None:
        widget = self.query_one(f"#{pane}")
        self.maximize(widget, container=False)
        widget.focus()

    def action_explanations(self) -> None:
        nav(self.app).open_explanations(self.run_dir)

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
