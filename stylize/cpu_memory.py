"""Keep freed memory for reuse on glibc, so CPU inference does not page-fault on every call.

glibc serves blocks over its mmap threshold (128 KiB to 32 MiB, adaptive) as fresh pages and
returns them to the kernel when freed.  A network's activations at 1024 px are 16-135 MB each,
so every forward pass then touches about 1 GB of brand-new pages and pays a page fault per
4 KiB: measured here, about a quarter of the CPU time at 1024 px (scripts/bench_apply.py,
`--default-allocator` to compare).  onnxruntime avoids the same cost with its own arena.

`keep_freed_memory()` tells glibc to serve large blocks from the heap and never trim it, so
freed activations are reused by the next layer and the next image.  It is process-wide and the
process keeps its peak memory until it exits, which suits a command-line run; the CLI calls it
for CPU work, library users decide for themselves.  It does nothing on other C libraries.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc to keep and reuse freed memory; True when it accepted (Linux/glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
