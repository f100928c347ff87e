"""The event stream (`events.jsonl`): the one definition both halves use.

One JSON object per line, flushed per line, written by rank 0 only (and by the launcher for the
final `run_finished` when the engine died without one). Every event has v, type, ts.
Pure Python: the TUI and CLI import it without torch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.sanitize import clean_obj

VERSION = 1
# The stream's file in a run dir.
EVENTS_FILE = "events.jsonl"
# Run-dir file that says a stop was asked for (chexui writes it, then signals; the engine reads it).
STOP_FILE = "stop_requested"


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of file a run exports (the `kind` of the `exported` event's artifacts)."""

    kind: str
    file: str  # its name in the run's export/ dir
    # the `evaluated` split(s) measuring it, first match wins. `test` is what the run ships (its
    # headline): for a QAT or post-training int8 run, its int8 model, the graph of the int8 artifact;
    # runs before that was so have `test_int8`. (`test_qat`: a QAT run's fake-quantized model.)
    splits: tuple[str, ...]
    cpu_only: bool = False  # x86 int8 kernels / onnxruntime's CPU provider


# Every artifact kind, in the order a run exports them: the one table export, evaluation, bench, compare
# and report read (engine/inference/export.py writes and loads them). fp32 and onnx_fp32 are every
# run's; the others come with the compression methods that declare them (`Method.artifacts`).
ARTIFACTS = {
    a.kind: a
    for a in (
        ArtifactKind("fp32", "model_fp32.pt", ("test_fp32", "test")),
        ArtifactKind("sparse", "model_sparse.pt", ("test_sparse",)),
        ArtifactKind("int8", "model_int8.pt2", ("test_int8", "test"), cpu_only=True),
        ArtifactKind("onnx_fp32", "model_fp32.onnx", ("test_onnx_fp32",), cpu_only=True),
        ArtifactKind("onnx_int8", "model_int8.onnx", ("test_onnx_int8",), cpu_only=True),
    )
}
ARTIFACT_SPLITS = {k: a.splits for k, a in ARTIFACTS.items()}

# type -> the fields it must carry (DESIGN.md section 6). Extra fields are allowed, e.g. `epoch_ended`'s
# compile_s (seconds torch.compile took in that epoch; runs with train.compile only), gpu_util (each
# rank's mean GPU utilisation in %, on CUDA with nvidia-ml-py), qat_observers ("live" | "frozen") and, for
# channel pruning, macs_ratio (the model's MACs over the dense model's; `sparsity` is then the fraction of
# channels removed). `exported` artifacts carry macs and params (of one image through the model), and a
# channel-pruned run's event structure = "channel", macs_ratio and, with several ranks,
# channel_counts_agree (every rank's smaller model had the same layer sizes).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "run_started": ("run_id", "config", "world_size", "nnodes", "device", "dataset"),
    "epoch_started": ("epoch",),
    "progress": ("epoch", "step", "steps", "loss", "images_per_s"),
    "epoch_ended": (
        "epoch",
        "train_loss",
        "val_loss",
        "val_auc",
        "val_auc_mean",
        "lr",
        "epoch_time_s",
        "images_per_s",
        "sparsity",
        "memory_mb",
    ),
    "checkpoint_saved": ("epoch", "path", "best"),
    "lr_reduced": ("epoch", "lr"),
    "early_stopped": ("epoch",),
    "restarted": ("attempt", "resumed_epoch"),
    "operating_points": ("rule", "split", "thresholds"),
    "evaluated": ("split", "n", "auc", "auc_mean"),
    "exported": ("artifacts",),
    "run_finished": ("status", "epochs", "total_time_s", "best_epoch", "test_auc_mean"),
    "error": ("message",),
    # the LR range test (engine/training/lr_find.py): one per step, then the suggestion (lr None: too
    # few steps to suggest one)
    "lr_find_step": ("step", "lr", "loss", "smoothed"),
    "lr_suggested": ("suggested_lr", "train_lr", "rule", "steps", "ended"),
    # `chexui run --slurm` (chexui/slurm.py), before the job starts: the scheduler's job id
    "slurm_submitted": ("job_id", "script", "nodes"),
}

# The type of every required field, checked on read: a line of valid JSON with the wrong shape (a
# hand-edited or foreign file) is skipped like a malformed one, so no reader meets a surprise.
_NUM, _OPT_NUM = (int, float), (int, float, type(None))
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "ts": _NUM,
    "run_id": (str,),
    "config": (dict,),
    "world_size": (int,),
    "nnodes": (int,),
    "device": (str,),
    "dataset": (dict,),
    "epoch": (int,),
    "step": (int,),
    "steps": (int,),
    "loss": _NUM,
    "images_per_s": _NUM,
    "train_loss": _NUM,
    "val_loss": _NUM,
    "val_auc": (dict,),
    "val_auc_mean": _OPT_NUM,
    "lr": _NUM,
    "epoch_time_s": _NUM,
    "sparsity": _OPT_NUM,
    "memory_mb": (list,),
    "path": (str,),
    "best": (bool,),
    "attempt": (int,),
    "resumed_epoch": (int,),
    "split": (str,),
    "n": (int,),
    "auc": (dict,),
    "auc_mean": _OPT_NUM,
    "artifacts": (list,),
    "status": (str,),
    "total_time_s": _NUM,
    "best_epoch": (int,),
    "test_auc_mean": _OPT_NUM,
    "message": (str,),
    "rule": (str,),
    "thresholds": (dict,),
    "smoothed": _NUM,
    "suggested_lr": _OPT_NUM,
    "train_lr": _OPT_NUM,
    "ended": (str,),
}


# Nested shapes of the fields readers look into (a run dir may come from anyone: a shape chexui does not
# write must not reach a reader). A shape is a tuple of types, or one of:
#   ("map", SHAPE)            {str: SHAPE}            ("list", SHAPE)   [SHAPE, ...]
#   ("record", {k: SHAPE}, REQUIRED)  a dict whose listed keys (the REQUIRED ones present) have shapes
#   ("or_none", SHAPE)        SHAPE or null
_STR, _INT, _DICT = (str,), (int,), (dict,)
_PAIR = ("or_none", ("list", _NUM))  # a confidence interval [lo, hi]
_AT_THRESHOLD = (
    "map",
    (
        "or_none",
        (
            "record",
            {
                "threshold": _OPT_NUM,
                "sensitivity": _OPT_NUM,
                "specificity": _OPT_NUM,
                "ppv": _OPT_NUM,
                "npv": _OPT_NUM,
                "f1": _OPT_NUM,
                **{f"{m}_ci": _PAIR for m in ("sensitivity", "specificity", "ppv", "npv", "f1")},
            },
            (),
        ),
    ),
)
SHAPES: dict[str, Any] = {
    "config": ("record", {"name": _STR, "description": _STR, "sweep": _STR}, ()),  # + sections: _config_shape
    "dataset": (
        "record",
        {
            "root": _STR,
            "n_train": _INT,
            "n_val": _INT,
            "n_test": _INT,
            "n_patients": _INT,
            "split_sha256": _STR,
            "label_counts": ("map", _NUM),
        },
        ("root", "n_train", "n_val", "n_test", "n_patients"),
    ),
    "parent": (
        "record",
        {
            "run_id": _STR,
            "path": _STR,
            "best_sha256": _STR,
            "best_epoch": (int, type(None)),
            "total_time_s": _OPT_NUM,
            "train_time_s": _OPT_NUM,
            "test_auc_mean": _OPT_NUM,
        },
        (),
    ),
    "val_auc": ("map", _OPT_NUM),
    "auc": ("map", _OPT_NUM),
    "thresholds": ("map", _OPT_NUM),
    "temperatures": ("map", _OPT_NUM),
    "auc_ci": ("map", _PAIR),
    "auc_mean_ci": _PAIR,
    "memory_mb": ("list", _NUM),
    "gpu_util": ("list", _OPT_NUM),  # per rank, % (CUDA with nvidia-ml-py only)
    "qat_observers": _STR,
    "macs_ratio": _NUM,  # channel pruning: the model's MACs over the dense model's
    "structure": _STR,
    "channel_counts_agree": (bool,),
    "compile_s": _NUM,
    "n_labels_defined": _INT,
    "test_n_labels_defined": _INT,
    "artifacts": (
        "list",
        (
            "record",
            {
                "kind": _STR,
                "path": _STR,
                "bytes": _INT,
                "gzip_bytes": _INT,
                "sha256": _STR,
                "macs": _INT,
                "params": _INT,
            },
            ("kind", "path", "bytes"),
        ),
    ),
    "bootstrap": ("record", {"resamples": _INT, "seed": _INT, "unit": _STR}, ("resamples", "seed", "unit")),
    "at_threshold": _AT_THRESHOLD,
    "operating_point": _STR,
    "predictions": _STR,
    "ece": ("map", _OPT_NUM),
    "model": _STR,
    "world_size": _INT,
    "code": _INT,
    "min_loss_lr": _NUM,  # lr_suggested: the LR at the smoothed loss's minimum, and at its steepest fall
    "steepest_lr": _NUM,
    "png": _STR,  # lr_suggested: the curve's file in the run dir
    "job_id": _STR,  # slurm_submitted: the scheduler's job id, the script's file in the run dir, the nodes
    "script": _STR,
    "nodes": _INT,
    "fall": _NUM,  # lr_suggested: the smoothed loss's fall below its start, a share of it ...
    "clear": (bool,),  # ... and whether that is a clear fall (engine/training/lr_find.py: CLEAR_FALL)
}


def fits(value: Any, shape: Any) -> bool:
    """Whether a JSON value has `shape` (see SHAPES)."""
    if isinstance(shape, tuple) and shape and isinstance(shape[0], type):
        return isinstance(value, shape) and not (isinstance(value, bool) and bool not in shape)
    kind = shape[0]
    if kind == "or_none":
        return value is None or fits(value, shape[1])
    if kind == "map":
        return isinstance(value, dict) and all(fits(v, shape[1]) for v in value.values())
    if kind == "list":
        return isinstance(value, list) and all(fits(v, shape[1]) for v in value)
    fields, required = shape[1], shape[2]  # "record"
    return (
        isinstance(value, dict)
        and all(k in value for k in required)
        and all(fits(value[k], s) for k, s in fields.items() if k in value)
    )


def _config_fits(cfg: dict) -> bool:
    """A run config as events carry it: each known section a table, each known key of the schema's type
    (values are not range-checked here: an old run's config stays readable)."""
    from engine.config import SCHEMA

    for section, fields in SCHEMA.items():
        if section not in cfg:
            continue
        if not isinstance(cfg[section], dict):
            return False
        for key, field in fields.items():
            kinds = field.kind if isinstance(field.kind, tuple) else (field.kind,)
            if key in cfg[section] and not fits(cfg[section][key], tuple(kinds)):
                return False
    return True


def well_formed(ev: Any) -> bool:
    """A dict with a string type; a known type carries its required fields with the right types, and
    every field readers look into has the nested shape chexui writes (an ill-shaped optional field is
    dropped by `parse_lines`)."""
    if not isinstance(ev, dict) or not isinstance(ev.get("type"), str):
        return False
    for name in EVENT_FIELDS.get(ev["type"], ()) + ("ts",):
        if (
            name not in ev
            or not isinstance(ev[name], FIELD_TYPES.get(name, (object,)))
            or isinstance(ev[name], bool)
            and bool not in FIELD_TYPES.get(name, (object,))
        ):
            return False
        if name in SHAPES and not fits(ev[name], SHAPES[name]):
            return False
    return not isinstance(ev.get("config"), dict) or _config_fits(ev["config"])


def _without_ill_shaped(ev: dict[str, Any]) -> dict[str, Any]:
    required = EVENT_FIELDS.get(ev["type"], ())
    return {k: v for k, v in ev.items() if k in required or k not in SHAPES or fits(v, SHAPES[k])}


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
        from engine.fsutil import open_append

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open_append(self.path)  # (never through a link planted at the path)
        end = os.fstat(self._f.fileno()).st_size
        if end > 0:  # a writer killed mid-line left a partial line: end it
            if os.pread(self._f.fileno(), 1, end - 1) != b"\n":
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


# Bounds on what a reader takes from a run dir: one line, the nesting of one event, one file
MAX_LINE = 1 << 20
MAX_DEPTH = 32
MAX_FILE = 256 << 20


def _depth_at_most(obj: Any, limit: int) -> bool:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            if d > limit:
                return False
            stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return True


def _not_finite(name: str) -> None:
    return None  # NaN / Infinity in a line read as null: readers and --json output see valid JSON values


def parse_lines(text: str) -> tuple[list[dict[str, Any]], str]:
    """Complete lines -> events; returns (events, unfinished tail). Malformed, overlong, too deeply
    nested or ill-shaped lines are skipped, NaN and Infinity read as null, and every string is stripped
    of control characters (events reach terminals)."""
    lines = text.split("\n")
    tail = lines.pop()  # "" when text ends with a newline, else a partial line still being written
    events = []
    for line in lines:
        line = line.strip()
        if not line or len(line) > MAX_LINE:
            continue
        try:
            ev = json.loads(line, parse_constant=_not_finite)
        except (ValueError, RecursionError):
            continue
        if _depth_at_most(ev, MAX_DEPTH) and well_formed(ev):
            events.append(clean_obj(_without_ill_shaped(ev)))
    return events, tail


def read_events(path: str | Path, start: int = 0) -> list[dict[str, Any]]:
    """All complete events of a file from byte offset `start` (a partial last line is ignored); [] when
    missing. A link, FIFO, device or a file over MAX_FILE bytes is a StorageError naming it."""
    from engine.fsutil import open_regular

    try:
        with open_regular(path, MAX_FILE) as f:
            f.seek(start)
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return parse_lines(text)[0]


class FileTail:
    """Incremental reader of an appended text file: `lines()` returns the complete lines written since
    the last call (a partial last line waits for its newline). A file that is not a regular file gives
    nothing (`problem` says why); at most MAX_LINE bytes of a line without its newline are kept."""

    CHUNK = 8 << 20  # bytes read per call at most: a huge file is followed a chunk at a time

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._offset = 0
        self._tail = ""
        self.problem: str | None = None

    def lines(self) -> list[str]:
        from engine.errors import StorageError
        from engine.fsutil import open_regular

        try:
            with open_regular(self.path) as f:
                f.seek(self._offset)
                chunk = f.read(self.CHUNK)
        except FileNotFoundError:
            return []
        except StorageError as e:
            self.problem = str(e)
            return []
        self._offset += len(chunk)
        *complete, self._tail = (self._tail + chunk.decode("utf-8", errors="replace")).split("\n")
        if len(self._tail) > MAX_LINE:
            self._tail = ""
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
