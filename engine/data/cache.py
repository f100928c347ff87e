"""The decoded-image cache: every image decoded once into a memory-mapped uint8 array.

Layout in the cache dir (the user cache dir, or $CHEXUI_CACHE_DIR; datasets may be read-only):
  <key>/images_<size>.u8     N x size x size uint8, rows in CSV order
  <key>/images_<size>.json   {names, size, fingerprint}
The fingerprint covers names, file sizes, mtimes, ctimes and inodes; a change rebuilds the cache. It is taken before
decoding and again after: an image replaced while the cache is built fails the build (never a cache
that claims to be current and holds the old pixels).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from engine.data.nih import NIHIndex, load_gray
from engine.errors import DataError, StorageError
from engine.fsutil import write_atomic


def cache_root() -> Path:
    env = os.environ.get("CHEXUI_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("chexui")) / "images"


def fingerprint(index: NIHIndex) -> str:
    h = hashlib.sha256()
    for name, p in zip(index.names, index.paths):
        try:
            st = os.stat(p)
        except OSError as e:
            raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
        # st_ctime_ns and st_ino too: a file rewritten in place with its mtime restored (`cp -p`,
        # `touch -r`) or replaced by another (`rsync -a` renames a new file over it) keeps its size and
        # mtime, but the kernel sets its ctime (no call can set it back) or gives it a new inode
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    return h.hexdigest()


def cache_paths(index: NIHIndex, size: int) -> tuple[Path, Path]:
    key = hashlib.sha256(str(index.root.resolve()).encode()).hexdigest()[:16]
    d = cache_root() / key
    return d / f"images_{size}.u8", d / f"images_{size}.json"


def open_cache(index: NIHIndex, size: int) -> np.memmap | None:
    """The cache for this dataset and size if it exists and is current, else None."""
    data, meta = cache_paths(index, size)
    try:
        info = json.loads(meta.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if info.get("size") != size or info.get("n") != len(index) or info.get("fingerprint") != fingerprint(index):
        return None
    return np.memmap(data, dtype=np.uint8, mode="r", shape=(len(index), size, size))


def _decode_chunk(args: tuple[str, list[tuple[int, str]], int, int]) -> int:
    data_path, items, n, size = args
    arr = np.memmap(data_path, dtype=np.uint8, mode="r+", shape=(n, size, size))
    for i, path in items:
        arr[i] = load_gray(path, size)
    arr.flush()
    return len(items)


def _reserve(path: Path, nbytes: int) -> None:
    """Create the cache file with all its blocks allocated: a memory map over a sparse file on a full
    disk dies with SIGBUS at the first page that cannot be stored; this fails up front, cleanly."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.posix_fallocate(fd, 0, max(1, nbytes))
    finally:
        os.close(fd)


def prepare(
    index: NIHIndex, size: int, workers: int | None = None, progress=None, force: bool = False, fill=_decode_chunk
) -> np.memmap:
    """Build (or reuse) the cache. Decodes in parallel processes; writes atomically. `fill` (a
    module-level function, as `_decode_chunk`) writes a chunk's rows: benchmarks draw phantoms straight
    into the cache with it."""
    if not force:
        current = open_cache(index, size)
        if current is not None:
            return current
    data, meta = cache_paths(index, size)
    tmp = data.with_suffix(f".tmp{os.getpid()}")
    n = len(index)
    before = fingerprint(index)
    items = [(i, str(p)) for i, p in enumerate(index.paths)]
    chunk = 64
    jobs = [(str(tmp), items[k : k + chunk], n, size) for k in range(0, n, chunk)]
    workers = max(1, workers or os.cpu_count() or 1)
    done = 0
    try:
        data.parent.mkdir(parents=True, exist_ok=True)
        _reserve(tmp, n * size * size)
        if workers == 1:
            results = map(fill, jobs)
            for k in results:
                done += k
                if progress:
                    progress(done, n)
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for k in pool.map(fill, jobs):
                    done += k
                    if progress:
                        progress(done, n)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if fingerprint(index) != before:
            raise DataError(f"{index.root}: images changed while the cache was being built; run again")
        os.replace(tmp, data)
    except OSError as e:
        raise StorageError(
            f"{data.parent}: cannot write the image cache ({e.strerror or e}; it needs "
            f"{n * size * size / 2**20:.0f} MiB); free space, set $CHEXUI_CACHE_DIR elsewhere, "
            "or set data.cache = false"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    info = {
        "size": size,
        "n": n,
        "fingerprint": before,
        "root": str(index.root),
        "names": [str(x) for x in index.names],
    }
    write_atomic(meta, json.dumps(info))
    return np.memmap(data, dtype=np.uint8, mode="r", shape=(n, size, size))
