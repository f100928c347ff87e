"""The run directory's layout: the one place its file names are spelled (DESIGN.md section 7).

    RUN_DIR/config.toml            the resolved config the engine ran
    RUN_DIR/events.jsonl           the event stream (engine/events.py)
    RUN_DIR/split.json             the patient split manifest (its sha256 ties compress runs to parents)
    RUN_DIR/checkpoints/last.pt    everything a resume needs
    RUN_DIR/checkpoints/best.pt    the best epoch's model (and what the run chose and made for it)
    RUN_DIR/predictions/SPLIT.npz  per-image probabilities of each evaluation
    RUN_DIR/export/                the artifacts (engine/inference/export.py)
    RUN_DIR/logs/                  the engine's output per rank

Pure Python (no torch).
"""

from __future__ import annotations

from engine.events import EVENTS_FILE, STOP_FILE

CONFIG_FILE = "config.toml"
SPLIT_FILE = "split.json"
CHECKPOINTS_DIR = "checkpoints"
BEST = f"{CHECKPOINTS_DIR}/best.pt"
LAST = f"{CHECKPOINTS_DIR}/last.pt"
PREDICTIONS_DIR = "predictions"
EXPORT_DIR = "export"
LOGS_DIR = "logs"

__all__ = [
    "BEST",
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "EVENTS_FILE",
    "EXPORT_DIR",
    "LAST",
    "LOGS_DIR",
    "PREDICTIONS_DIR",
    "SPLIT_FILE",
    "STOP_FILE",
]
