"""Process lifetime on Linux: no process of a run outlives the one that started it. Pure Python
(ctypes), used by the launcher (chexui) and the training workers (engine)."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(option, value)


def die_with_parent(expected_parent: int | None = None) -> None:
    """SIGTERM this process when its parent dies. The signal only covers a parent that dies after it
    is armed: with `expected_parent`, a process whose parent is already gone exits at once."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)


def become_subreaper() -> None:
    """Orphaned descendants are re-parented to this process instead of init, so it can still find and
    end them."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
