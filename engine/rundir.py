"""The run directory's layout: the one place its file names are spelled (DESIGN.md section 7).

    RUN_DIR/config.toml            the resolved config the engine ran
    RUN_DIR/events.jsonl           the event stream (engine/events.py)
    RUN_DIR/split.json             the patient split manifest (its sha256 ties compress runs to parents)
    RUN_DIR/checkpoints/last.pt    everything a resume needs
    RUN_DIR/checkpoints/best.pt    the best epoch's model (and what the run chose and made for it)
    RUN_DIR/predictions/SPLIT.npz  per-image probabilities of each evaluation
    RUN_DIR/export/                the artifacts (engine/inference/export.py)
    RUN_DIR/logs/                  the engine's output (engine.log) and the launcher's (launcher.log)

Reading a run back goes through here too: `load_config`, `events`, and the events of one type
(`first`, `last`). Pure Python (no torch).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine import config
from engine.events import EVENTS_FILE, STOP_FILE, read_events

CONFIG_FILE = "config.toml"
SPLIT_FILE = "split.json"
CHECKPOINTS_DIR = "checkpoints"
BEST = f"{CHECKPOINTS_DIR}/best.pt"
LAST = f"{CHECKPOINTS_DIR}/last.pt"
PREDICTIONS_DIR = "predictions"
EXPORT_DIR = "export"
LOGS_DIR = "logs"
ENGINE_LOG = f"{LOGS_DIR}/engine.log"  # the engine's output (every rank), drained by the launcher
LAUNCHER_LOG = f"{LOGS_DIR}/launcher.log"


def load_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's resolved config (validated: a run dir may come from anyone)."""
    return config.load_run_config(Path(run_dir) / CONFIG_FILE)


def events(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's events (well-formed ones only: engine/events.py)."""
    return read_events(Path(run_dir) / EVENTS_FILE)


def first(events: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((e for e in events if e["type"] == type_), None)


def last(events: list[dict[str, Any]], type_: str) -> dict[str, Any] | None:
    return next((e for e in reversed(events) if e["type"] == type_), None)


__all__ = [
    "BEST",
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "ENGINE_LOG",
    "EVENTS_FILE",
    "EXPORT_DIR",
    "LAST",
    "LAUNCHER_LOG",
    "LOGS_DIR",
    "PREDICTIONS_DIR",
    "SPLIT_FILE",
    "STOP_FILE",
    "events",
    "first",
    "last",
    "load_config",
]
