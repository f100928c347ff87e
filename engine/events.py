"""The event stream (`events.jsonl`): the one definition both halves use.

One JSON object per line, flushed per line, written by rank 0 only (and by the launcher for the
final `run_finished` when the engine died without one). Every event has v, type, ts.
Pure Python: the TUI and CLI import it without torch.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from engine.sanitize import clean_obj

VERSION = 1
# Run-dir file that says a stop was asked for (chexui writes it, then signals; the engine reads it).
STOP_FILE = "stop_requested"
# `evaluated` split(s) measuring each exported artifact kind, first match wins: a run without QAT has
# no `test_fp32`, its fp32 artifact is the best model that `test` measured
ARTIFACT_SPLITS = {"fp32": ("test_fp32", "test"), "sparse": ("test_sparse",), "int8": ("test_int8",),
                   "onnx_fp32": ("test_onnx_fp32",), "onnx_int8": ("test_onnx_int8",)}

# type -> the fields it must carry (DESIGN.md section 6). Extra fields are allowed, e.g. `epoch_ended`'s
# compile_s (seconds torch.compile took in that epoch; runs with train.compile only).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "run_started": ("run_id", "config", "world_size", "nnodes", "device", "dataset"),
    "epoch_started": ("epoch",),
    "progress": ("epoch", "step", "steps", "loss", "images_per_s"),
    "epoch_ended": ("epoch", "train_loss", "val_loss", "val_auc", "val_auc_mean", "lr",
                    "epoch_time_s", "images_per_s", "sparsity", "memory_mb"),
    "checkpoint_saved": ("epoch", "path", "best"),
    "lr_reduced": ("epoch", "lr"),
    "early_stopped": ("epoch",),
    "restarted": ("attempt", "resumed_epoch"),
    "operating_points": ("rule", "split", "thresholds"),
    "evaluated": ("split", "n", "auc", "auc_mean"),
    "exported": ("artifacts",),
    "run_finished": ("status", "epochs", "total_time_s", "best_epoch", "test_auc_mean"),
    "error": ("message",),
}

# The type of every required field, checked on read: a line of valid JSON with the wrong shape (a
# hand-edited or foreign file) is skipped like a malformed one, so no reader meets a surprise.
_NUM, _OPT_NUM = (int, float), (int, float, type(None))
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "ts": _NUM, "run_id": (str,), "config": (dict,), "world_size": (int,), "nnodes": (int,), "device": (str,),
    "dataset": (dict,), "epoch": (int,), "step": (int,), "steps": (int,), "loss": _NUM, "images_per_s": _NUM,
    "train_loss": _NUM, "val_loss": _NUM, "val_auc": (dict,), "val_auc_mean": _OPT_NUM, "lr": _NUM,
    "epoch_time_s": _NUM, "sparsity": _OPT_NUM, "memory_mb": (list,), "path": (str,), "best": (bool,),
    "attempt": (int,), "resumed_epoch": (int,), "split": (str,), "n": (int,), "auc": (dict,),
    "auc_mean": _OPT_NUM, "artifacts": (list,), "status": (str,), "total_time_s": _NUM, "best_epoch": (int,),
    "test_auc_mean": _OPT_NUM, "message": (str,), "rule": (str,), "thresholds": (dict,),
}


def well_formed(ev: Any) -> bool:
    """A dict with a string type; a known type carries its required fields with the right types."""
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
        return False
    for name in EVENT_FIELDS.get(ev["type"], ()) + ("ts",):
        if name not in ev or not isinstance(ev[name], FIELD_TYPES.get(name, (object,))):
            return False
    return True


def make(type_: str, **fields: Any) -> dict[str, Any]:
    if type_ not in EVENT_FIELDS:
        raise ValueError(f"unknown event type {type_!r}")
    missing = [f for f in EVENT_FIELDS[type_] if f not in fields]
    if missing:
        raise ValueError(f"event {type_!r} lacks {missing}")
    return {"v": VERSION, "type": type_, "ts": time.time(), **fields}


class EventWriter:
    """Appends events to a file, one line each, flushed (and fsynced for terminal events)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        if self._f.tell() > 0:  # a writer killed mid-line left a partial line: end it
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    self._f.write("\n")

    def emit(self, type_: str, **fields: Any) -> dict[str, Any]:
        event = make(type_, **fields)
        self._f.write(json.dumps(event, allow_nan=False, default=_jsonable) + "\n")
        self._f.flush()
        if type_ in ("run_finished", "error", "checkpoint_saved"):
            os.fsync(self._f.fileno())
        return event

    def close(self) -> None:
        self._f.close()


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def parse_lines(text: str) -> tuple[list[dict[str, Any]], str]:
    """Complete lines -> events; returns (events, unfinished tail). Malformed or ill-shaped lines are
    skipped; every string is stripped of control characters (events reach terminals)."""
    lines = text.split("\n")
    tail = lines.pop()  # "" when text ends with a newline, else a partial line still being written
    events = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if well_formed(ev):
            events.append(clean_obj(ev))
    return events, tail


def read_events(path: str | Path, start: int = 0) -> list[dict[str, Any]]:
    """All complete events of a file from byte offset `start` (a partial last line is ignored); [] when
    missing."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return []
    return parse_lines(text)[0]


class FileTail:
    """Incremental reader of an appended text file: `lines()` returns the complete lines written since
    the last call (a partial last line waits for its newline)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._tail = ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(chunk)
        *complete, self._tail = (self._tail + chunk.decode("utf-8", errors="replace")).split("\n")
        return complete


class EventTail(FileTail):
    """Incremental event reader: each `poll()` returns the events appended since the last call."""

    def poll(self) -> list[dict[str, Any]]:
        return parse_lines("".join(line + "\n" for line in self.lines()))[0]


def follow(path: str | Path, stop: Any = None, interval: float = 0.2) -> Iterator[dict[str, Any]]:
    """Yield events as they are appended. Ends once no new event comes and `stop()` is true (e.g. the
    run's launcher is gone); without `stop`, once the stream is finished (a run may be resumed after a
    `run_finished`, so the first one does not end it)."""
    tail = EventTail(path)
    finished = False
    while True:
        batch = tail.poll()
        for ev in batch:
            yield ev
            if ev["type"] in ("run_started", "restarted"):
                finished = False
            elif ev["type"] == "run_finished":
                finished = True
        if not batch:
            if stop() if stop is not None else finished:
                yield from tail.poll()
                return
            time.sleep(interval)


def last_evaluation(events: list[dict[str, Any]], split: str = "test") -> dict[str, Any] | None:
    """The latest `evaluated` event of a split (a resumed run may have evaluated more than once)."""
    return next((e for e in reversed(events) if e["type"] == "evaluated" and e["split"] == split), None)


def final_status(events: list[dict[str, Any]]) -> str | None:
    """Status of the last `run_finished` after the last start/restart, else None (not finished)."""
    status = None
    for ev in events:
        if ev["type"] in ("run_started", "restarted"):
            status = None
        elif ev["type"] == "run_finished":
            status = ev["status"]
    return status
