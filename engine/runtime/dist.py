"""Process-group helper: reads torchrun's variables, falls back to one process."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world: int = 1
    nnodes: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        tdist.all_gather_object(out, obj)
        return out

    def any_flags(self, flags: list[bool]) -> list[bool]:
        """Each flag true on every rank when it is set on any rank (one collective: all ranks call it)."""
        if not self.active:
            return list(flags)
        t = torch.tensor([1.0 if f else 0.0 for f in flags], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return [bool(v > 0) for v in t.tolist()]

    @torch.no_grad()
    def broadcast_state(self, module: torch.nn.Module, buffers_only: bool = False) -> None:
        """Rank 0's parameters and buffers (or buffers only) on every rank, in place.

        DDP syncs buffers only before a training forward, so after an epoch each rank holds its own
        BatchNorm running stats and QAT observer ranges: evaluation and checkpoints must all use rank 0's.
        """
        if not self.active:
            return
        tensors = list(module.buffers()) if buffers_only else list(module.state_dict().values())
        for t in tensors:
            # collectives want dense row-major tensors; channels_last weights go through a copy
            buf = t if t.is_contiguous() else t.contiguous()
            tdist.broadcast(buf, src=0)
            if buf is not t:
                t.copy_(buf)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return t.tolist()


def setup(backend: str = "auto") -> Dist:
    """Initialise the process group when started by torchrun (WORLD_SIZE set), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    nnodes = max(1, world // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    if world > 1 and not tdist.is_initialized():
        if backend == "auto":
            backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device if device.type == "cuda" else None}
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun's c10d rendezvous keeps one store across restart rounds: without a per-attempt
            # prefix a restarted group reads the dead workers' addresses and gloo cannot connect.
            base = tdist.TCPStore(
                os.environ["MASTER_ADDR"],
                int(os.environ["MASTER_PORT"]),
                world,
                is_master=False,
                timeout=timedelta(minutes=30),
            )
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            kwargs.update(store=tdist.PrefixStore(f"chexui/attempt_{attempt}", base), rank=rank, world_size=world)
        tdist.init_process_group(backend=backend, **kwargs)
    return Dist(rank=rank, local_rank=local_rank, world=world, nnodes=nnodes, device=device)


def cleanup(sync: bool = False) -> None:
    """Destroy the process group. `sync` (normal exit): wait for every rank first, so no rank tears
    down gloo while a peer is still using it (seen as an abort at exit)."""
    if tdist.is_initialized():
        if sync:
            tdist.barrier()
        tdist.destroy_process_group()
