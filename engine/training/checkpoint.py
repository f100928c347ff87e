"""A run's checkpoints: atomic writes, weights-only reads, and a best model that always matches last.pt.

`checkpoints/last.pt` holds everything a resume needs; `checkpoints/best.pt` the model of the best
epoch. A new best is committed in two phases, so that a kill at any moment leaves the two agreeing on
which epoch is best: `best.next.pt` is written first, then `last.pt` (which names the best epoch), then
`best.next.pt` replaces `best.pt`. `recover()` (on resume) finishes a commit that last.pt already
names and drops one it does not.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from engine.errors import StorageError
from engine.fsutil import fsync_dir, open_regular, remove_stale_temps, write_atomic


def save_atomic(obj: Any, path: str | Path, write: Callable[[Any, Any], None] = torch.save) -> None:
    """Serialize in memory, then write atomically: a full disk raises StorageError with the real reason
    (torch's zip writer would report it as an `inline_container.cc` enforce failure)."""
    buf = io.BytesIO()
    write(obj, buf)
    write_atomic(path, buf.getbuffer())  # (a memoryview: written without copying the buffer)


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint read with weights_only (no code from the file runs), from a regular file only (a
    FIFO or device in a run dir is refused, not waited on); damage is a StorageError."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise StorageError(f"{path}: not found") from None
    except StorageError:
        raise
    except Exception as e:  # UnpicklingError (a forbidden global), RuntimeError (not a zip), EOFError ...
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise StorageError(f"{path}: not a readable checkpoint ({type(e).__name__}: {reason})") from None


class RunCheckpoints:
    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.last, self.best, self.best_next = (self.dir / n for n in ("last.pt", "best.pt", "best.next.pt"))

    def clean(self) -> None:
        """Temp files of writes killed midway (only rank 0 writes here: call it before the first save)."""
        remove_stale_temps(self.dir)

    def save(self, last: dict, best: dict | None = None) -> None:
        if best is not None:
            save_atomic(best, self.best_next)
        save_atomic(last, self.last)
        if best is not None:
            os.replace(self.best_next, self.best)
            fsync_dir(self.dir)

    def amend_best(self, **parts: Any) -> None:
        """Add parts to best.pt (what was chosen or calibrated for the best model at the end of a run);
        nothing when the run has no best checkpoint."""
        if self.best.is_file():
            save_atomic({**load(self.best), **parts}, self.best)

    def recover(self, best_epoch: int) -> None:
        if not self.best_next.is_file():
            return
        try:
            epoch = load(self.best_next).get("epoch")
        except StorageError:
            epoch = None
        if epoch == best_epoch and best_epoch > 0:
            os.replace(self.best_next, self.best)
        else:
            self.best_next.unlink()

    def load_best(self, best_epoch: int) -> dict | None:
        """best.pt, checked to be the epoch last.pt calls best; None when no epoch has been best yet."""
        if best_epoch == 0 and not self.best.is_file():
            return None
        ck = load(self.best)
        if ck.get("epoch") != best_epoch:
            raise StorageError(
                f"{self.best}: holds epoch {ck.get('epoch')}, but the run's best epoch is "
                f"{best_epoch}; refusing to report another model's results"
            )
        return ck
