"""CPU ranks return freed large buffers to the OS: a freed 16 MiB buffer below a live small one
stays resident under glibc's dynamic mmap threshold and leaves once the threshold is fixed."""

from __future__ import annotations

import os
import subprocess
import sys

from dist_llm.distributed import host_allocator

PROBE = r"""
import ctypes, ctypes.util, importlib.util, os, sys
# Loaded by path: the package would import torch, whose start-up allocations are not the point.
spec = importlib.util.spec_from_file_location("host_allocator", sys.argv[2])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
return_freed_buffers = module.return_freed_buffers
set_it = return_freed_buffers() if sys.argv[1] == "fixed" else False
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
MiB = 1 << 20
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
first = libc.malloc(24 * MiB); ctypes.memset(first, 1, 24 * MiB); libc.free(first)  # glibc learns 24 MiB
before = rss()
big = libc.malloc(16 * MiB); ctypes.memset(big, 1, 16 * MiB)
small = libc.malloc(1024); ctypes.memset(small, 1, 1024)  # keeps the heap from shrinking past big
libc.free(big)
print(set_it, (rss() - before) / MiB)
"""


def _retained_mib(mode: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode, host_allocator.__file__],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0], float(out[1])


def test_freed_large_buffers_leave_the_resident_set():
    set_it, fixed = _retained_mib("fixed")
    _, default = _retained_mib("default")
    assert set_it == "True"
    assert default > 12, f"glibc's default kept {default:.1f} MiB (the problem this fixes)"
    assert fixed < 2, f"{fixed:.1f} MiB of a freed 16 MiB buffer still resident"


def test_a_threshold_the_user_set_is_kept():
    set_it, _ = _retained_mib("fixed", {"MALLOC_MMAP_THRESHOLD_": str(64 << 20)})
    assert set_it == "False"
