"""Freed large host buffers go back to the OS at once on CPU ranks (glibc).

glibc serves a request above its mmap threshold with a mapping of its own, returned to the OS when
freed, and anything smaller from the heap, where freed memory stays resident. The threshold starts
at 128 KiB but rises to the size of every mapped block freed (up to 32 MiB), so after the first
steps FSDP2's per-block buffers (all-gather outputs, unsharded copies, reduce-scatter inputs, freed
and allocated again for every block) come from the heap and stay resident: measured 0.45 GB more
per rank than is ever live at once, on a 160M model on 2 ranks (BENCHMARKS.md, planner section).
Fixing the threshold at 1 MiB keeps the resident set at what is live, which is what the planner
predicts and what a rank's share of host memory must hold. GPU ranks are unaffected (their large
buffers are device memory), as are allocators other than glibc's and a threshold the user set
through MALLOC_MMAP_THRESHOLD_.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def return_freed_buffers() -> bool:
    """Fix glibc's mmap threshold for this process; whether it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): nothing to tune
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, THRESHOLD_BYTES))
