"""Atomic file writes and their leftovers. Pure Python: chexui uses it without torch.

Every file a run keeps (checkpoints, artifacts, launcher.json, cache metadata, per-layer sparsity) is
written the same way: a temp file beside the target, fsync, `os.replace`, fsync of the directory. A
write that fails (disk full, read-only dir) raises StorageError naming the file and the reason and
leaves the previous version in place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine.errors import StorageError

TEMP_SUFFIX = ".tmp"


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never a part."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
    except OSError as e:
        raise StorageError(f"{path}: cannot write ({e.strerror or e}); the previous file, if any, is kept") from None


def remove_stale_temps(*dirs: str | Path) -> int:
    """Delete the temp files of writes that were killed midway (one writer per run dir: call at start)."""
    n = 0
    for d in dirs:
        d = Path(d)
        if d.is_dir():
            for p in d.glob(f".*{TEMP_SUFFIX}"):
                p.unlink(missing_ok=True)
                n += 1
    return n
