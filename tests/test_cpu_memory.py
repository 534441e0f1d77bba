"""glibc allocator tuning for CPU inference, checked in a child process (it is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import ctypes, sys
from stylize.cpu_memory import keep_freed_memory
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
if sys.argv[1] == "tuned":
    assert keep_freed_memory() is True
before = libc.mallinfo2().hblks
big = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblks - before
libc.free(big)
print(mapped, libc.mallinfo2().fordblks >= (64 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_blocks_come_from_the_heap_and_stay_for_reuse():
    def run(mode: str) -> str:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    # default glibc: a 64 MiB block is its own mmap, returned to the kernel when freed
    assert run("default") == ["1", "False"]
    # tuned: served from the heap (no mmap) and kept, free, for the next allocation
    assert run("tuned") == ["0", "True"]
