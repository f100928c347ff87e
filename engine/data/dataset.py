"""The one data-root and cache decision, shared by the CLI, sweeps and the engine. Pure Python (no torch).

`data.root = ""` is the embedded demo dataset, generated on first use; any other root is an NIH-layout
dataset. With `data.cache = true` the decoded uint8 cache is built when it is missing or stale.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np

from engine.data import cache, demo, nih


def resolve_root(root: str, progress=None) -> Path:
    """The dataset dir; the demo set is generated here on first use."""
    if root:
        return Path(root).expanduser()
    if not (demo.default_root() / "Data_Entry_2017.csv").is_file():
        with (progress or _silent)("generating the demo dataset (first use)") as cb:
            return demo.ensure(demo.default_root(), progress=cb)
    return demo.default_root()


def prepare(data_cfg: dict, progress=None, build: bool = True) -> tuple[nih.NIHIndex, np.memmap | None]:
    """Index the dataset (DataError on bad data) and open or build its cache. `progress(label)` is a
    context manager giving a (done, total) callback, for a progress bar; None for none. `build=False`
    (training ranks other than 0) only opens a current cache: without one, images are decoded from
    their files (another node of a multi-node run has no copy of rank 0's cache)."""
    index = nih.index_dataset(resolve_root(data_cfg["root"], progress))
    if not data_cfg["cache"]:
        return index, None
    size = data_cfg["image_size"]
    mem = cache.open_cache(index, size)
    if mem is None and build:
        with (progress or _silent)(f"decoding images into the {size} px cache") as cb:
            mem = cache.prepare(index, size, workers=max(1, data_cfg["workers"]), progress=cb, force=True)
    return index, mem


def _silent(label: str):
    return nullcontext(None)
