"""An epoch's training loss, summed where it is computed, read without stalling the GPU.

Reading a CUDA tensor (`.item()`) waits until the GPU has run every kernel queued so far: the host's
lead drains and the next steps start from an idle GPU. So the step only adds its loss to a sum on the
device; every `every` steps a copy of (sum, last loss) starts into pinned host memory behind a CUDA
event, and `latest()` returns the newest copy that has landed, never waiting for one. Progress events
and the divergence check read that (a few steps late); the epoch's mean waits once, at its end.
On the CPU every copy has landed at once, so the figures there are the current step's.
"""

from __future__ import annotations

import math

import torch


class _Ran:
    """A CPU step's event: done as soon as it is queued."""

    @staticmethod
    def query() -> bool:
        return True


_RAN = _Ran()


class RunningLoss:
    """One train_one_epoch call's step losses: `add` each, `latest` to peek, `total` at the end."""

    def __init__(self, device: torch.device, every: int = 10):
        self.device, self.every = device, every
        self.sum = torch.zeros((), dtype=torch.float64, device=device)  # every step's loss, this call
        self.n = 0
        self.known: tuple[float, float, int] | None = None  # (last loss, sum, steps in it) on the host
        self._pending: tuple[torch.Tensor, torch.cuda.Event | _Ran, int] | None = None

    @torch.no_grad()
    def add(self, loss: torch.Tensor) -> None:
        """Count one step's loss (queued on the device: no wait). With CUDA graphs `loss` is a static
        output that the next replay overwrites; this add runs on the same stream, before it."""
        self.sum += loss.detach()
        self.n += 1
        if self.n % self.every == 0:
            self._snapshot(loss.detach())

    def _snapshot(self, loss: torch.Tensor) -> None:
        self._poll()
        if self._pending is not None:  # the previous copy has not landed yet: the GPU is far behind
            return
        pair = torch.stack([loss.double(), self.sum])
        if self.device.type == "cuda":
            host = torch.empty(2, dtype=torch.float64, pin_memory=True)
            host.copy_(pair, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (host, event, self.n)
        else:  # the CPU has run it already
            self._pending = (pair, _RAN, self.n)

    def _poll(self) -> None:
        if self._pending is not None and self._pending[1].query():
            host, _, n = self._pending
            self.known = (float(host[0]), float(host[1]), n)
            self._pending = None

    def latest(self) -> tuple[float, float, int] | None:
        """(last loss, running sum, steps summed) of the newest snapshot on the host; None before one."""
        self._poll()
        return self.known

    def finite(self) -> bool:
        """False once a landed snapshot holds a non-finite loss (any step's, as the sum keeps it)."""
        k = self.latest()
        return k is None or (math.isfinite(k[0]) and math.isfinite(k[1]))

    def total(self) -> tuple[float, int]:
        """(sum, steps) of every step so far: waits for the device, so call it at the end."""
        return float(self.sum), self.n
