"""Headless output from the event stream: a rich progress bar in a terminal, plain lines otherwise.

Without a TTY, or with NO_COLOR set, nothing but plain text lines is printed (no control codes), so
nohup, tee and log files read well.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from chexui.format import auroc_rows, ci_text, epoch_time_text, fmt, mean_text
from chexui.runstate import RunState
from chexui.safe import safe
from engine.labels import LABELS
from engine.sanitize import clean


class SafeConsole(Console):
    """A rich Console that shows every string it is given as plain text (`chexui.safe.safe`): run names,
    error messages, preset descriptions and file names come from files anyone may have written, so no
    string is read as markup and no control or bidi character reaches the terminal."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        super().print(*(safe(o) if isinstance(o, str) else o for o in objects), **kwargs)


class SafeTable(Table):
    """A rich Table whose string headers, cells, title and caption are plain text (`safe`)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("title", "caption") and isinstance(value, str):
            value = safe(value)
        super().__setattr__(name, value)

    def add_column(self, header: Any = "", *args: Any, **kwargs: Any) -> None:
        super().add_column(safe(header) if isinstance(header, str) else header, *args, **kwargs)

    def add_row(self, *cells: Any, **kwargs: Any) -> None:
        super().add_row(*(safe(c) if isinstance(c, str) else c for c in cells), **kwargs)


def plain_mode(stream=None) -> bool:
    stream = stream or sys.stdout
    return bool(os.environ.get("NO_COLOR")) or not stream.isatty()


def console(stderr: bool = False) -> Console:
    """Rich console; without a TTY (or with NO_COLOR): no control codes and no wrapping at 80 columns."""
    plain = plain_mode(sys.stderr if stderr else sys.stdout)
    return SafeConsole(
        stderr=stderr,
        no_color=plain,
        highlight=False,
        soft_wrap=True,
        force_terminal=False if plain else None,
        width=240 if plain else None,
    )


def table(*columns: str, title: str | None = None) -> Table:
    t = SafeTable(title=title, box=box.ASCII2 if plain_mode() else box.SIMPLE_HEAVY)
    for c in columns:
        t.add_column(c)
    return t


def auc_table(ev: dict[str, Any], title: str) -> Table:
    """An `evaluated` event (or `chexui eval` result) as a table: per-class AUROC with its 95 % CI, and
    the mean with how many labels it covers."""
    rows, mean = auroc_rows(ev)
    boot = ev.get("bootstrap")
    at = ev.get("at_threshold")  # the operating points chosen on validation (runs since chexui chose them)
    t = table("label", "AUROC", "95% CI", *(("threshold", "sensitivity", "specificity") if at else ()), title=title)
    for c in t.columns[1:]:
        c.justify = "right"
    for r in rows:
        t.add_row(r.label, r.auroc + (f" ({r.mark})" if r.mark else ""), r.ci, *(r.at or ()))
    t.add_row(f"mean of {mean.label} labels", mean.auroc, mean.ci, *(mean.at or ()))
    notes = [f"95% CI: {boot['resamples']} {boot['unit']} bootstrap resamples, seed {boot['seed']}"] if boot else []
    if at:
        notes.append(
            f"calls at {ev.get('operating_point')} thresholds chosen on validation (PPV, NPV, F1 and "
            "their CIs: --json / events.jsonl)"
        )
    t.caption = "; ".join(notes) or None
    return t


def epoch_line(e: dict[str, Any]) -> str:
    mem = "/".join(f"{m:.0f}" for m in e.get("memory_mb") or [])
    sp = f" sparsity {e['sparsity']:.3f}" if e.get("sparsity") is not None else ""
    if isinstance(e.get("macs_ratio"), (int, float)):  # channel pruning: the fraction is of channels
        sp = f" channels removed {fmt(e.get('sparsity'), '.3f')} MACs {e['macs_ratio']:.2f}x"
    util = "/".join(f"{u:.0f}%" for u in e.get("gpu_util") or [] if u is not None)
    gpu = f" gpu_util {util}" if util else ""
    return (
        f"epoch {e['epoch']}: train_loss {e['train_loss']:.4f} val_loss {e['val_loss']:.4f} "
        f"val_auc {mean_text(e.get('val_auc_mean'), e.get('val_auc'))} lr {e['lr']:.2e} time {epoch_time_text(e)} "
        f"{e['images_per_s']:.0f} img/s mem_mb {mem}{sp}{gpu}"
    )


def lr_suggestion_text(e: dict[str, Any]) -> str:
    """An `lr_suggested` event in words."""
    if e["suggested_lr"] is None:
        return f"lr-find: {e['ended']} after {e['steps']} steps: too few to suggest an LR"
    scale = (
        f"; train.lr {e['train_lr']:.3g} for {e.get('world_size')} processes (linear LR scaling)"
        if e["train_lr"] != e["suggested_lr"]
        else ""
    )
    weak = (
        f"; no clear fall (the smoothed loss fell {e['fall']:.1%} below its start): the suggestion is a guess"
        if e.get("clear") is False and isinstance(e.get("fall"), (int, float))
        else ""
    )
    return (
        f"lr-find: suggested LR {e['suggested_lr']:.3g} ({e['rule']} rule{scale}); {e['steps']} steps, "
        f"{e['ended']}; minimum loss at {fmt_lr(e.get('min_loss_lr'))}, steepest fall at {fmt_lr(e.get('steepest_lr'))}"
        + weak
    )


def fmt_lr(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, (int, float)) else "-"


class HeadlessView:
    """Feed it events; it prints each as it comes, and keeps the run folded so far (`state`, the one
    fold of the event stream, chexui/runstate.py). Used by `chexui run --headless` and `chexui watch --headless`."""

    def __init__(self, console: Console | None = None, plain: bool | None = None):
        self.plain = plain_mode() if plain is None else plain
        self.console = console or globals()["console"]()
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.state = RunState()
        self._last_plain = 0.0

    def say(self, text: str) -> None:
        if self.plain:
            print(clean(text), flush=True)
        else:
            self.console.print(text)

    def _end_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def handle_all(self, events: list[dict[str, Any]]) -> None:
        for e in events:
            self.handle(e)

    def handle(self, e: dict[str, Any]) -> None:
        self.state.apply(e)
        t = e["type"]
        if t == "run_started":
            cfg = e["config"]
            ds = e["dataset"]
            self.say(
                f"run {e['run_id']}: {cfg.get('name')} {(cfg.get('model') or {}).get('arch')} on {e['device']}, "
                f"world size {e['world_size']} ({e['nnodes']} node(s)); data {ds['root']}: "
                f"{ds['n_train']} train / {ds['n_val']} val / {ds['n_test']} test images, "
                f"{ds['n_patients']} patients"
            )
            if e.get("parent"):
                par = e["parent"]
                self.say(
                    f"compressing the best model (epoch {par.get('best_epoch')}) of run {par.get('run_id')}: "
                    f"{cfg.get('description', '')}"
                )
        elif t == "restarted":
            self.say(f"resumed at epoch {e['resumed_epoch']} (attempt {e['attempt']})")
        elif t == "epoch_started":
            self._end_progress()
            if not self.plain:
                self.progress = Progress(
                    TextColumn(f"epoch {e['epoch']}/{self.state.epochs_total or '?'}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TextColumn("loss {task.fields[loss]}"),
                    TextColumn("{task.fields[ips]} img/s"),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=self.console,
                    transient=True,
                )
                self.task = self.progress.add_task("train", total=None, loss="-", ips="-")
                self.progress.start()
        elif t == "progress":
            if self.progress is not None and self.task is not None:
                self.progress.update(
                    self.task,
                    completed=e["step"],
                    total=e["steps"],
                    loss=f"{e['loss']:.4f}",
                    ips=f"{e['images_per_s']:.0f}",
                )
            elif time.monotonic() - self._last_plain > 10:
                self._last_plain = time.monotonic()
                self.say(
                    f"  epoch {e['epoch']} step {e['step']}/{e['steps']} loss {e['loss']:.4f} "
                    f"{e['images_per_s']:.0f} img/s"
                )
        elif t == "epoch_ended":
            self._end_progress()
            self.say(epoch_line(e))
        elif t == "lr_reduced":
            self.say(f"  learning rate reduced to {e['lr']:.2e}")
        elif t == "early_stopped":
            self.say(f"early stop after epoch {e['epoch']}")
        elif t == "evaluated" and e["split"] == "test":
            self._end_progress()
            self.console.print(auc_table(e, f"{e['split']} AUROC ({e['n']} images)"))
        elif t == "evaluated":  # an exported artifact: its mean is enough here (`runs show` has the table)
            self.say(
                f"{e['split']} AUROC mean {mean_text(e['auc_mean'], e['auc'])} 95% CI "
                f"{ci_text(e.get('auc_mean_ci'))} ({e['n']} images)"
            )
        elif t == "exported":
            fp32 = next((a["bytes"] for a in e["artifacts"] if a["kind"] == "fp32"), None)
            for a in e["artifacts"]:
                ratio = f", {a['bytes'] / fp32:.2f}x fp32" if fp32 and a["kind"] != "fp32" else ""
                gz = f", gzip {a['gzip_bytes']:,}" if "gzip_bytes" in a else ""
                macs = f", {a['macs'] / 1e9:.3f} GMACs" if isinstance(a.get("macs"), (int, float)) else ""
                self.say(f"exported {a['kind']}: {a['path']} ({a['bytes']:,} bytes{gz}{ratio}{macs})")
        elif t == "operating_points":
            n = sum(v is not None for v in e["thresholds"].values())
            self.say(
                f"operating points: {e['rule']} thresholds for {n}/{len(LABELS)} labels, chosen on "
                f"{e.get('n', '?')} {e['split']} images"
            )
        elif t == "error":
            self._end_progress()
            self.say(f"error: {e['message']}")
        elif t == "lr_find_step":
            if e["step"] == 1 or e["step"] % 25 == 0:
                self.say(
                    f"  lr-find step {e['step']}: lr {e['lr']:.3g} loss {e['loss']:.4f} (smoothed {e['smoothed']:.4f})"
                )
        elif t == "lr_suggested":
            self.say(lr_suggestion_text(e))
        elif t == "run_finished" and self.state.is_lr_find:
            self.say(f"lr-find {e['status']} in {e['total_time_s']:.0f}s")
        elif t == "run_finished":
            self._end_progress()
            self.say(
                f"run {e['status']}: {e['epochs']} epochs in {e['total_time_s']:.0f}s, best epoch "
                f"{e['best_epoch']}, test AUROC {self._test_mean(e)}"
            )

    def _test_mean(self, finished: dict[str, Any]) -> str:
        n = finished.get("test_n_labels_defined")
        return fmt(finished.get("test_auc_mean")) + (f" ({n}/{len(LABELS)})" if n is not None else "")

    def close(self) -> None:
        self._end_progress()
