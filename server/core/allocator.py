"""C allocator settings for a process that serves for weeks.

Theory of operation: Python hands every buffer above 512 bytes to the C library's
malloc.  glibc's malloc serves requests above `M_MMAP_THRESHOLD` (128 KiB) with a
fresh mapping that goes back to the kernel on free — but the threshold is dynamic:
freeing such a mapping raises it to that size, so from then on every upload chunk,
request body or compressed variant of that size comes from the heap, where freed
memory between live objects is never returned.  Under a mixed load (uploads of a
few hundred KiB, FTP transfers, 64 KiB receive buffers, thread pools with one arena
each) the resident size then creeps upward for as long as the process runs; the
10-minute soak saw 47 → 80 MiB with no leak in Python's own heap (tracemalloc).

Fixing the threshold (which also turns the dynamic adjustment off), trimming the
heap top above 1 MiB, and allowing two arenas instead of eight per core keeps the
resident size flat at a lower level (`loadtest/soak.py`).  Settings the operator
chose through glibc's own environment variables (`MALLOC_MMAP_THRESHOLD_`, ...) win.
On a C library without `mallopt` (musl) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

__all__ = ["tune_allocator"]

log = logging.getLogger("pageloan.allocator")

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

_SETTINGS = (
    (M_MMAP_THRESHOLD, 128 << 10, "MALLOC_MMAP_THRESHOLD_"),
    (M_TRIM_THRESHOLD, 1 << 20, "MALLOC_TRIM_THRESHOLD_"),
    (M_ARENA_MAX, 2, "MALLOC_ARENA_MAX"),
)


def tune_allocator() -> bool:
    """Apply the settings above; True if the C library took them."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = True
    for param, value, variable in _SETTINGS:
        if variable in os.environ:
            continue                  # the operator's choice
        applied = bool(mallopt(param, value)) and applied
    log.debug("allocator settings %s", "applied" if applied else "refused")
    return applied
