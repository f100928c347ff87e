"""Files in directories someone else may have written: atomic writes, appends and reads that never
follow a planted link, and output dirs that never overwrite what chexui did not write. Pure Python:
chexui uses it without torch.

Every file a run keeps (checkpoints, artifacts, launcher.json, cache metadata, per-layer sparsity) is
written the same way: a temp file beside the target, fsync, `os.replace` (which replaces a planted link
itself, never the file it points to), fsync of the directory. A write that fails (disk full, read-only
dir) raises StorageError naming the file and the reason and leaves the previous version in place.
Appended files (events, logs) are opened without following a link, and files read from a run dir must
be regular files (a FIFO would hang the reader, /dev/zero would fill its memory).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import IO

from engine.errors import StorageError

TEMP_SUFFIX = ".tmp"


def fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | memoryview | str) -> None:
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


def sha256(path: str | Path) -> str:
    """A file's sha256, read a MiB at a time."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def open_append(path: str | Path) -> IO[str]:
    """`path` opened for appending text, created if missing, never through a link: a symlink planted at
    a run's events.jsonl or engine.log would otherwise append to the file it points to."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StorageError(f"{path}: cannot append ({_why(e)})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise StorageError(f"{path}: not a regular file; refusing to write to it")
    return os.fdopen(fd, "a", encoding="utf-8")


def open_regular(path: str | Path, max_bytes: int | None = None) -> IO[bytes]:
    """`path` opened for reading only if it is a regular file (not a link, FIFO or device) of at most
    `max_bytes`. FileNotFoundError when missing; StorageError naming the file otherwise."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO would wait for a writer; O_NOFOLLOW: a link is refused (ELOOP)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StorageError(f"{path}: a symbolic link; chexui reads only regular files here") from None
        raise StorageError(f"{path}: cannot read ({_why(e)})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise StorageError(f"{path}: not a regular file; refusing to read it")
    if max_bytes is not None and st.st_size > max_bytes:
        os.close(fd)
        raise StorageError(f"{path}: {st.st_size:,} bytes, more than the {max_bytes:,} such a file may have")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_regular(path: str | Path, max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file (`open_regular`'s checks)."""
    with open_regular(path, max_bytes) as f:
        return f.read() if max_bytes is None else f.read(max_bytes + 1)[:max_bytes]


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


class OutputDir:
    """A directory chexui writes figures and tables into (`explain --out`, `report --out`), which may
    already hold files, planted links among them. It is created if missing and refused when it is a
    link or not a directory; each file is written atomically through the directory's descriptor (no
    path is re-resolved, a link in it is never followed), and a name that exists is replaced only when
    this directory's manifest (`.chexui-written.json`) says chexui wrote it. A bad name, a read-only
    dir or a full disk is a StorageError naming the file."""

    MANIFEST = ".chexui-written.json"

    def __init__(self, path: str | Path, below: str | Path | None = None):
        """`below`: a directory the output dir lies in (e.g. the runs dir for RUN/explain); no directory
        between the two may be a link (a run dir planted as a link to someone's home)."""
        self.path = Path(path)
        d = self.path
        while below is not None and Path(below) in d.parents:
            if d.is_symlink():
                raise StorageError(f"{d}: a symbolic link; refusing to write through it")
            d = d.parent
        if self.path.is_symlink():
            raise StorageError(f"{self.path}: a symbolic link; choose another output directory")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            what = (
                "a symbolic link"
                if e.errno == errno.ELOOP
                else "not a directory"
                if e.errno in (errno.ENOTDIR, errno.EEXIST)
                else f"cannot write there ({_why(e)})"
            )
            raise StorageError(f"{self.path}: {what}; choose another output directory") from None
        self.written = set(self._manifest())

    def _manifest(self) -> list[str]:
        try:
            fd = os.open(self.MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError:
            return []
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return []
            try:
                names = json.loads(f.read(1 << 20))
            except ValueError:
                return []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def write(self, name: str, data: bytes | str) -> Path:
        """Write `name` (a plain file name) in the directory; returns its path."""
        if not name or "/" in name or name in (".", "..") or name.startswith(".") and name != self.MANIFEST:
            raise StorageError(f"{self.path}: {name!r} is not a plain file name")
        target = self.path / name
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and name != self.MANIFEST and (name not in self.written or not stat.S_ISREG(st.st_mode)):
            raise StorageError(
                f"{target}: exists and was not written by chexui; refusing to replace it "
                "(choose another output directory, or remove it)"
            )
        raw = data.encode() if isinstance(data, str) else data
        tmp = f".{name}.{os.getpid()}{TEMP_SUFFIX}"
        try:
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=self.fd
            )
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(raw)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
            except BaseException:
                try:
                    os.unlink(tmp, dir_fd=self.fd)
                except OSError:
                    pass
                raise
        except OSError as e:
            raise StorageError(f"{target}: cannot write ({_why(e)})") from None
        if name != self.MANIFEST and name not in self.written:
            self.written.add(name)
            self.write(self.MANIFEST, json.dumps(sorted(self.written)))
        return target

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


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
