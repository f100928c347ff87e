"""Training data: the split, uint8 image batches (cached or decoded), batched augmentation on device.

Images travel as uint8 [B, S, S] until they reach the training device; flip, scaling to [0, 1],
the 3-channel ImageNet normalisation and channels_last happen there, batched, so per-image Python
work never starves the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from engine import dataset, nih

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


def to_input(x: torch.Tensor, device: torch.device, flip: torch.Tensor | None = None,
             channels_last: bool = False) -> torch.Tensor:
    """uint8 [B,S,S] -> normalised float [B,3,S,S] on device; `flip` is a bool [B] mask.

    Flips on the uint8 batch (4x less memory traffic), then one fused multiply-add per element
    scales to [0, 1] and applies the 3-channel ImageNet normalisation.
    """
    on_device = x.to(device, non_blocking=True)
    if flip is not None and bool(flip.any()):
        if on_device is x:  # never modify the caller's tensor
            on_device = x.clone()
        sel = flip.nonzero().flatten().to(device)
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
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    order = list(sampler)
    full = len(order) // batch_size * batch_size or len(order)
    return [order[i:i + batch_size] for i in range(0, full, batch_size)]


def loader(images: Images, batches: list[list[int]], rows: np.ndarray, workers: int,
           pin: bool) -> DataLoader:
    """Batches of positions -> (uint8 images, labels, rows). Cached data needs no worker processes."""
    row_batches = [rows[np.sort(b)].tolist() for b in batches]  # sorted: memmap locality
    return DataLoader(images, sampler=row_batches, batch_size=None,
                      num_workers=0 if images.mem is not None else workers, pin_memory=pin,
                      persistent_workers=False)


def eval_batches(n: int, batch_size: int, world: int, rank: int) -> tuple[np.ndarray, list[list[int]]]:
    """Every image exactly once across ranks (no padding): rank r takes positions r, r+W, ..."""
    mine = np.arange(rank, n, world)
    return mine, [mine[i:i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
