"""Training data: the split, uint8 image batches (cached or decoded), batched augmentation on device.

Images travel as uint8 [B, S, S] until they reach the training device; flip, scaling to [0, 1],
the 3-channel ImageNet normalisation and channels_last happen there, batched, so per-image Python
work never starves the GPU.
"""

from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from engine.data import dataset, nih

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Images(Dataset):
    """Index a *list* of dataset rows -> (uint8 images [B,S,S], uint8 labels [B,14], rows [B]).

    From the memory-mapped cache when given one, else decoded from the files (same function the
    cache was built with, so both give identical tensors).
    """

    def __init__(self, index: nih.NIHIndex, size: int, mem: np.ndarray | None = None):
        self.index, self.size, self.mem = index, size, mem

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        if self.mem is not None:
            imgs = np.asarray(self.mem[rows])  # fancy indexing copies out of the memmap
        else:
            imgs = np.stack([nih.load_gray(self.index.paths[r], self.size) for r in rows])
        return torch.from_numpy(imgs), torch.from_numpy(self.index.labels[rows]), torch.from_numpy(rows)


_NORM: dict = {}


def to_input(
    x: torch.Tensor, device: torch.device, flip: torch.Tensor | None = None, channels_last: bool = False
) -> torch.Tensor:
    """uint8 [B,S,S] -> normalised float [B,3,S,S] on device; `flip` is a bool [B] mask.

    Flips on the uint8 batch (4x less memory traffic), then one fused multiply-add per element
    scales to [0, 1] and applies the 3-channel ImageNet normalisation.
    """
    on_device = x.to(device, non_blocking=True)
    if flip is not None and bool(flip.any()):
        if on_device is x:  # never modify the caller's tensor
            on_device = x.clone()
        sel = flip.nonzero().flatten()
        if device.type == "cuda":  # a copy from pageable memory waits for all queued GPU work: pin it
            sel = sel.pin_memory()
        sel = sel.to(device, non_blocking=True)
        on_device[sel] = on_device[sel].flip(-1)
    x = on_device
    key = (device.type, device.index)  # normalisation constants, made once per device
    if key not in _NORM:
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        _NORM[key] = (-torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) / std, 1.0 / (255.0 * std))
    shift, scale = _NORM[key]
    out = torch.addcmul(shift, x.unsqueeze(1).float(), scale)  # broadcasts gray to 3 channels
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def flip_mask(n: int, p: float, seed: int, epoch: int, step: int, rank: int) -> torch.Tensor | None:
    """Per-step flip decisions from their own generator: a resumed run draws the same flips."""
    if p <= 0:
        return None
    g = torch.Generator().manual_seed(hash((seed, epoch, step, rank)) & 0x7FFFFFFF)
    return torch.rand(n, generator=g) < p


@dataclass
class Data:
    index: nih.NIHIndex
    split: dict[str, np.ndarray]
    manifest: dict
    images: Images

    def pos_neg(self) -> tuple[np.ndarray, np.ndarray]:
        y = self.index.labels[self.split["train"]]
        pos = y.sum(0).astype(np.float64)
        return pos, len(y) - pos

    def summary(self) -> dict:
        """The `dataset` field of `run_started`: where the data is, the split's sizes and its sha256, and
        the training split's positives per label."""
        idx, split = self.index, self.split
        return {
            "root": str(idx.root),
            "n_train": len(split["train"]),
            "n_val": len(split["val"]),
            "n_test": len(split["test"]),
            "n_patients": int(len(np.unique(idx.patients))),
            "split_sha256": self.manifest["sha256"],
            "label_counts": nih.label_counts(idx.labels[split["train"]]),
        }


def load_data(data_cfg: dict, is_main: bool = True, barrier=lambda: None) -> Data:
    """Index, split and image source. Rank 0 builds the demo set and the cache; the others then open them."""
    if is_main:
        index, mem = dataset.prepare(data_cfg)
    barrier()
    if not is_main:
        index, mem = dataset.prepare(data_cfg, build=False)
    root = index.root
    split = nih.make_split(index, data_cfg)
    for s in nih.SPLITS:
        if len(split[s]) == 0:
            raise nih.DataError(f"{root}: the {s} split is empty (too few patients?)")
    manifest = nih.split_manifest(index, split)
    return Data(index, split, manifest, Images(index, data_cfg["image_size"], mem))


def train_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This rank's batches (positions into the train split) for one epoch.

    DistributedSampler's shuffle: with W ranks at batch b, step k covers the same images as one
    process at batch W*b. Incomplete last batches are dropped (BatchNorm needs > 1 sample).
    """
    # (the sampler reads only the dataset's length: a range stands for it)
    sampler: DistributedSampler = DistributedSampler(
        cast(Dataset, range(n)), num_replicas=world, rank=rank, shuffle=True, seed=seed
    )
    sampler.set_epoch(epoch)
    order = list(sampler)
    full = len(order) // batch_size * batch_size or len(order)
    return [order[i : i + batch_size] for i in range(0, full, batch_size)]


def loader(
    images: Images, batches: list[list[int]], rows: np.ndarray, workers: int, device: torch.device, pin: bool
) -> Prefetched | nullcontext[DataLoader]:
    """Batches of positions -> (uint8 images, labels, rows), to use as `with loader(...) as batches:`
    (the block's end stops the prefetch thread). Cached data needs no worker processes: a thread
    reads (and pins) the next batches while the step runs."""
    row_batches = [rows[np.sort(b)].tolist() for b in batches]  # sorted: memmap locality
    n_workers = 0 if images.mem is not None else workers
    dl = DataLoader(
        images, sampler=row_batches, batch_size=None, num_workers=n_workers, pin_memory=pin, persistent_workers=False
    )
    return Prefetched(dl, device) if n_workers == 0 else nullcontext(dl)  # (workers prefetch already)


class Prefetched:
    """Iterate `source` in a background thread, up to `depth` items ahead.

    Without it a cached batch (a memmap gather, then a copy into pinned memory: about 5 ms for 256
    images at 224 px) is read between two steps, on the host's critical path; in the thread it
    overlaps the step, since numpy's gather and torch's copies release the GIL. An error in the
    thread is raised to the consumer; closing (or leaving the `with` block, or dropping the iterator)
    stops the thread. Hand-written: DataLoader prefetches only with worker processes (which would copy
    every batch through shared memory once more), and torchdata's thread prefetcher is another
    dependency whose releases are tied to torch's, for these 40 lines.
    """

    def __init__(self, source, device: torch.device, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(source, device), daemon=True, name="chexui-prefetch")
        self._thread.start()

    def _run(self, source, device: torch.device) -> None:
        try:
            if device.type == "cuda":  # pinned buffers belong to this rank's GPU, not to GPU 0
                torch.cuda.set_device(device)
            for item in source:
                if not self._put((item, None)):
                    return
            self._put((None, None))
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer
            self._put((None, e))

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self):
        try:
            while True:
                item, error = self._queue.get()
                if error is not None:
                    raise error
                if item is None:
                    return
                yield item
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> Prefetched:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def eval_batches(n: int, batch_size: int, world: int, rank: int) -> tuple[np.ndarray, list[list[int]]]:
    """Every image exactly once across ranks (no padding): rank r takes positions r, r+W, ..."""
    mine = np.arange(rank, n, world)
    return mine, [mine[i : i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
