"""The CPU a benchmark ran on: its model name and the instruction sets int8 kernels use. Pure Python.

int8 speed depends on them (VNNI / AMX do int8 dot products in one instruction; AVX2 alone emulates
them), so every CPU figure is printed with both.
"""

from __future__ import annotations

import platform
from pathlib import Path

INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def int8_isa() -> str:
    """The int8-relevant instruction sets present, best first, e.g. "avx512_vnni avx512bw avx2"."""
    for line in _cpuinfo().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return " ".join(f for f in INT8_FLAGS if f in flags) or "none of " + "/".join(INT8_FLAGS)
    return "unknown"
