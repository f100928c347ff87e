"""Memory per rank (peak GPU memory on CUDA, RSS on the CPU) and, on CUDA with nvidia-ml-py, each
rank's mean GPU utilisation over the last epoch."""

from __future__ import annotations

from textual.reactive import var
from textual.widgets import Static


def memory_text(memory_mb: tuple, gpu_util: tuple) -> str:
    mem = " ".join(f"r{i}:{m:.0f}" for i, m in enumerate(memory_mb)) or "-"
    util = " ".join(f"r{i}:{u:.0f}%" for i, u in enumerate(gpu_util) if u is not None)
    return f"memory MB/rank {mem}" + (f" · GPU util {util}" if util else "")


class MemoryLine(Static):
    """`usage` = (memory MB per rank, GPU utilisation % per rank or ())."""

    usage: var[tuple] = var(lambda: ((), ()))

    def watch_usage(self, usage: tuple) -> None:
        self.update(memory_text(*usage), layout=False)  # (one line, whatever it says)
