"""Launcher: pick a preset, edit the main fields, check the data, start (or save as a preset), or find
the learning rate first (the LR range test of the form's config: its curve here, its suggestion put in
the form's LR field).

Fields map to config keys; each change is validated with the engine's config schema, and an invalid
field is flagged where it is, before Start.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Select, Static
from textual.worker import get_current_worker

from chexui import presets as presets_mod
from chexui import runs as runs_mod
from chexui.launch import gpu_count
from chexui.runstate import RunState
from chexui.safe import safe
from chexui.tui.navigation import nav, still_shown
from chexui.tui.widgets.lr_plot import LRPlot
from engine import config
from engine.errors import UserError
from engine.events import EVENTS_FILE, EventTail
from engine.sanitize import clean

# form field id -> config key (values typed as TOML)
FIELDS = {
    "image_size": "data.image_size",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "epochs": "train.epochs",
    "nnodes": "distributed.nnodes",
}


def compression_sections(cfg: dict) -> list[str]:
    """The config sections of the compression methods a config turns on (each method's label says)."""
    return [section for section, label in config.LABELS.items() if label(cfg)]


class LrFindUpdate(Message):
    """New events of the launcher's LR range test (its worker thread -> the screen)."""

    def __init__(self, events: list[dict], ended: bool) -> None:
        super().__init__()
        self.events, self.ended = events, ended


class LauncherScreen(Screen):
    BINDINGS = [
        Binding("ctrl+s", "start", "Start"),
        Binding("ctrl+l", "lr_find", "Find LR"),
        Binding("b,escape", "back", "Runs"),
    ]
    HELP = """\
## Launcher: start a run

| key | |
|---|---|
| arrows, `enter` in the preset list | load that preset into the form |
| `tab` / `shift+tab` | next / previous field |
| `ctrl+s` or the Start button | start the run (its monitor opens) |
| `ctrl+l` or the Find LR button | the LR range test of the form's config (`chexui lr-find`) |
| the Submit to SLURM button | the run as a SLURM job (`chexui run --slurm`; the preset's `[slurm]` section) |
| `b` `escape` | the runs browser |

**presets**: built-in presets, your own (`chexui presets dir`) and a shared preset dir
(`CHEXUI_PRESETS`); the form shows the preset's main keys, and any field you change is checked against
the config schema at once (a field in red says what is allowed). **compression**: a compression preset's
sections (pruning, quantization-aware training) added to the run. **processes**: one per GPU, or CPU
processes (gloo) without one. **data dir**: an NIH ChestX-ray14 layout (`Data_Entry_2017*.csv`,
`images*/`); empty is the embedded demo dataset. Under it, a summary of the data (images, patients, label
counts, and patients found in two splits, which should be 0). **Save as preset** writes the form as a
preset that extends the one you started from. **Find LR** runs the LR range test of the form's
config as a run of its own (compression off; it shows in the runs browser): its curve appears under the
form, and its suggestion (the rule `lr_find.rule` names) goes into the learning-rate field.
"""

    def __init__(self, runs_dir: Path, preset: str = "demo") -> None:
        super().__init__()
        self.runs_dir = Path(runs_dir)
        self.preset = preset
        self.compression: dict[str, dict] = {}  # compression preset -> the sections it adds
        self.errors: dict[str, str] = {}
        self.lr_test: RunState | None = None  # the LR range test started here, as its events tell it
        gpus = gpu_count()
        self.proc_label = "GPUs" if gpus else "processes (CPU)"
        self.max_proc = gpus or max(1, os.cpu_count() or 1)

    def compose(self) -> ComposeResult:
        with Horizontal(id="launcher"):
            yield DataTable(id="presets", cursor_type="row")
            with VerticalScroll(id="form"):
                yield Select(
                    [(a, a) for a in config.SCHEMA["model"]["arch"].options()],
                    id="arch",
                    allow_blank=False,
                    value="resnet18",
                )
                for fid in ("image_size", "batch_size", "lr", "epochs"):
                    yield Input(id=fid)
                yield Select([(str(n), n) for n in range(1, self.max_proc + 1)], id="nproc", allow_blank=False, value=1)
                yield Input(id="nnodes", value="1")
                yield Select([("none", "none")], id="compression", allow_blank=False, value="none")
                yield Input(id="data", placeholder="empty: the embedded demo dataset")
                yield Static("", id="data-summary")
                yield Static("", id="form-error")
                with Horizontal(id="buttons"):
                    yield Button("Start", id="start", variant="success")
                    yield Button("Find LR", id="lr-find")
                    yield Button("Submit to SLURM", id="slurm")
                with Horizontal(id="save-row"):
                    yield Input(placeholder="preset name", id="save-name")
                    yield Button("Save as preset", id="save")
                yield LRPlot(id="lr-curve")
        yield Footer()

    TITLES = {
        "arch": "architecture",
        "image_size": "image size (px)",
        "batch_size": "batch size per process",
        "lr": "learning rate",
        "epochs": "epochs (cap)",
        "nnodes": "nodes",
        "compression": "compression",
        "data": "data dir (NIH layout)",
    }

    def on_mount(self) -> None:
        self.query_one(LRPlot).border_title = "LR range test"
        for wid, title in {**self.TITLES, "nproc": self.proc_label}.items():
            self.query_one(f"#{wid}").border_title = title
        table = self.query_one("#presets", DataTable)
        table.border_title = "presets"
        table.add_columns("name", "source", "description")
        available = presets_mod.available()
        names = {p.name for p in available}
        for p in available:
            table.add_row(safe(p.name), p.source, safe(p.description[:60]), key=p.name)
            if "/" not in p.name:  # (study/ presets are whole study arms, not a compression to add)
                try:
                    cfg = presets_mod.resolve(p.name)
                except UserError:
                    continue
                if sections := compression_sections(cfg):
                    self.compression[p.name] = {s: cfg[s] for s in sections}
        self.query_one("#compression", Select).set_options(
            [("none", "none")] + [(safe(c), c) for c in self.compression]
        )
        self.load_preset(self.preset if self.preset in names else "demo")

    # ------------------------------------------------------------ form <-> config
    def load_preset(self, name: str) -> None:
        try:
            cfg = presets_mod.resolve(name)
        except UserError as e:
            self.notify(clean(str(e)), severity="error", markup=False)
            return
        self.preset = name
        self.query_one("#arch", Select).value = cfg["model"]["arch"]
        for fid, key in FIELDS.items():
            section, sub = key.split(".")
            self.query_one(f"#{fid}", Input).value = str(cfg[section][sub])
        self.query_one("#nproc", Select).value = min(cfg["distributed"]["nproc"], self.max_proc)
        self.query_one("#data", Input).value = cfg["data"]["root"]
        self.check_data(cfg["data"]["root"])
        self.validate_form()

    def overrides(self) -> list[str]:
        sets = [
            f"model.arch={self.query_one('#arch', Select).value}",
            f"distributed.nproc={self.query_one('#nproc', Select).value}",
        ]
        for fid, key in FIELDS.items():
            sets.append(f"{key}={self.query_one(f'#{fid}', Input).value.strip()}")
        return sets

    def resolved(self) -> dict:
        """The config Start would run: preset, form fields, compression sections, data dir."""
        data = self.query_one("#data", Input).value.strip()
        cfg = presets_mod.resolve(self.preset, self.overrides(), data or None)
        comp = self.query_one("#compression", Select).value
        if isinstance(comp, str) and comp in self.compression:
            cfg = config.validate(config.merge(cfg, self.compression[comp]), f"compression preset {comp}")
        return cfg

    def validate_form(self) -> bool:
        self.errors = {}
        for fid, key in FIELDS.items():
            widget = self.query_one(f"#{fid}", Input)
            try:
                config.validate(config.parse_set(f"{key}={widget.value.strip()}"), "field", partial=True)
                widget.remove_class("invalid")
            except UserError as e:
                widget.add_class("invalid")
                self.errors[fid] = str(e).replace("field: ", "")
        msg = "\n".join(self.errors.values())
        if not msg:
            try:
                self.resolved()
            except UserError as e:
                msg = str(e)
        self.query_one("#form-error", Static).update(safe(msg, style="red"))
        self.query_one("#start", Button).disabled = bool(msg)
        self.query_one("#lr-find", Button).disabled = bool(msg) or self.lr_finding
        self.query_one("#slurm", Button).disabled = bool(msg)
        return not msg

    @on(Input.Changed)
    def field_changed(self, event: Input.Changed) -> None:
        if event.input.id == "data":
            self.check_data(event.value.strip())
        if event.input.id != "save-name":
            self.validate_form()

    @on(Select.Changed)
    def select_changed(self) -> None:
        self.validate_form()

    @on(DataTable.RowSelected, "#presets")
    def preset_chosen(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.load_preset(event.row_key.value)

    def check_data(self, root: str) -> None:
        if not root:  # nothing to read: no need to import pandas in the background
            self.query_one("#data-summary", Static).update("embedded demo dataset (generated on first use)")
        else:
            self._check_data(root)

    @work(thread=True, exclusive=True, group="data-check")
    def _check_data(self, root: str) -> None:
        from engine.data import nih

        try:
            s = nih.check_dataset(root, decode=False)
            labels = ", ".join(f"{k} {v}" for k, v in list(s["label_counts"].items())[:6])
            text = safe(
                f"{s['images']} images, {s['patients']} patients; {labels}, ...; "
                f"patients in two splits: {s['leakage_patients']}"
            )
        except UserError as e:
            text = safe(f"problem: {e}", style="red")
        self.app.call_from_thread(self.show_data_summary, text)

    def show_data_summary(self, text: Text) -> None:
        if still_shown(self, "#data-summary"):  # (the check's thread can end after the form closed)
            self.query_one("#data-summary", Static).update(text)

    # ------------------------------------------------------------ actions
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if not self.validate_form():
            return
        from chexui.launch import save_config, start_detached

        cfg = self.resolved()
        run_dir = runs_mod.new_run_dir(self.runs_dir, cfg.get("name", "run"))
        save_config(cfg, run_dir)
        start_detached(run_dir, self.runs_dir)
        nav(self.app).open_monitor(run_dir, replace=True)

    @on(Button.Pressed, "#slurm")
    def submit_slurm(self) -> None:
        if self.validate_form():
            self.query_one("#slurm", Button).disabled = True
            self._submit_slurm(self.resolved())

    @work(thread=True, exclusive=True, group="slurm")
    def _submit_slurm(self, cfg: dict) -> None:
        """sbatch (and the data's cache, which the nodes read) off the UI thread; then the runs browser,
        where the run's row shows the job's state."""
        from chexui import slurm
        from engine.data import dataset

        try:
            run_dir, job = slurm.submit_run(
                cfg, self.runs_dir, cfg.get("name", "run"), lambda c: dataset.prepare(c["data"])
            )
        except UserError as e:
            self.app.call_from_thread(self.notify, clean(str(e)), severity="error", markup=False)
            self.app.call_from_thread(self.validate_form)
            return
        self.app.call_from_thread(self.notify, clean(f"SLURM job {job}: run {run_dir.name}"), markup=False)
        self.app.call_from_thread(nav(self.app).open_runs)

    @property
    def lr_finding(self) -> bool:
        return self.lr_test is not None and self.lr_test.finished is None

    @on(Button.Pressed, "#lr-find")
    def action_lr_find(self) -> None:
        if self.lr_finding or not self.validate_form():
            return
        from chexui.launch import save_config, start_detached
        from chexui.lr_find import as_test

        try:
            cfg = as_test(self.resolved())
        except UserError as e:
            self.notify(clean(str(e)), severity="error", markup=False)
            return
        run_dir = runs_mod.new_run_dir(self.runs_dir, cfg["name"])
        save_config(cfg, run_dir)
        start_detached(run_dir, self.runs_dir)
        self.lr_test = RunState(run_id=run_dir.name)
        self.query_one("#lr-find", Button).disabled = True
        plot = self.query_one(LRPlot)
        plot.curve = ((), None)
        plot.display = True
        self.notify(clean(f"LR range test started: {run_dir.name}"), markup=False)
        self.follow_lr_test(run_dir)

    @work(thread=True, exclusive=True, group="lr-find")
    def follow_lr_test(self, run_dir: Path) -> None:
        worker = get_current_worker()
        events = EventTail(run_dir / EVENTS_FILE)
        started = last_alive_check = time.monotonic()
        while not worker.is_cancelled:
            new = events.poll()
            ended = any(e["type"] == "run_finished" for e in new)
            # (its launcher writes its pid file once it runs: not looked for in the first seconds)
            if not ended and time.monotonic() - max(last_alive_check, started + 8.0) > 2.0:
                last_alive_check = time.monotonic()
                # the launcher writes run_finished even when the engine dies: gone without it = killed
                ended = runs_mod.launcher_process(run_dir) is None and not events.poll()
            if new or ended:
                self.post_message(LrFindUpdate(new, ended))
            if ended:
                return
            time.sleep(0.25)

    def on_lr_find_update(self, msg: LrFindUpdate) -> None:
        st = self.lr_test
        if st is None:
            return
        for e in msg.events:
            st.apply(e)
        self.query_one(LRPlot).curve = (tuple(st.lr_curve), st.lr_suggested)
        if not msg.ended:
            return
        if st.finished is None:  # (killed before any run_finished: the worker saw its launcher gone)
            st.finished = {"status": "failed"}
        found = st.lr_suggested
        if found and found.get("train_lr"):
            self.query_one("#lr", Input).value = f"{found['train_lr']:.3g}"
            self.notify(f"LR {found['train_lr']:.3g} ({found['rule']} rule) set in the form")
        else:
            why = clean((found or {}).get("ended") or "; ".join(st.errors) or st.status)
            self.notify(f"the LR range test gave no suggestion: {why}", severity="warning", markup=False)
        self.validate_form()

    @on(Button.Pressed, "#save")
    def save_preset(self) -> None:
        name = self.query_one("#save-name", Input).value.strip()
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            self.notify("preset name: letters, digits, - _ . only", severity="error")
            return
        if not self.validate_form():
            return
        shared = [d for d, src in presets_mod.search_dirs() if src == "env"]
        target_dir = shared[0] if shared else presets_mod.user_dir()
        target_dir.mkdir(parents=True, exist_ok=True)
        body = config.apply_sets(
            {"extends": self.preset, "description": f"saved from the launcher (based on {self.preset})"},
            self.overrides(),
        )
        data = self.query_one("#data", Input).value.strip()
        if data:
            body = config.merge(body, {"data": {"root": data}})
        path = target_dir / f"{name}.toml"
        path.write_text(config.dumps(body))
        self.notify(clean(f"saved {path}"), markup=False)

    def action_back(self) -> None:
        nav(self.app).open_runs()
