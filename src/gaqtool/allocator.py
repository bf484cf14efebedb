"""Keep freed memory in the process, so that the large temporaries of every model call reuse it.

torch's CPU allocator takes its memory from ``malloc``. glibc serves large blocks (above a
threshold that adapts up to 32 MiB) with a fresh ``mmap`` and gives them back with ``munmap``
as soon as they are freed, and it trims the top of the heap once more than twice that is free.
A model call allocates many large temporaries (SevenNet: tens of (edges x 960) float32 tensors,
23 MB each at 216-atom Si), so every call pays their page faults and the kernel's zeroing
again: measured 15k-49k fresh 4 KiB pages per energy + forces call of the embedded model on 8
aspirins, against 4-5 with this setting (tests/unit/test_allocator.py), and the speed-ups in
docs/speed.md.

PyTorch's CPU performance guide recommends preloading jemalloc or tcmalloc for the same reason;
:func:`keep_freed_memory` gets the effect from glibc itself with ``mallopt``, for the process
that calls it: every block from the heap (no ``mmap``) and up to 1 GiB of freed memory kept.
The process's resident size then stays near its peak, which suits a process that runs a model
over and over (md, eval, bench, an ASE calculator).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

__all__ = ["keep_freed_memory", "freed_memory_kept", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "TOP_PAD"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts on 64-bit (fixed: no adaptive threshold)
TRIM_THRESHOLD = 1 << 30   # free memory at the heap's top kept up to this
TOP_PAD = 64 << 20         # extra taken from the system per heap growth


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Set glibc's malloc to serve every block from the heap and keep up to 1 GiB of freed memory
    (process-wide, once). True where it was applied; False elsewhere (not Linux with glibc),
    where it does nothing."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all([mallopt(option, value) == 1 for option, value in
                ((_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_MMAP_MAX, 0),
                 (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD))])


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` has been applied in this process (it cannot be undone)."""
    return keep_freed_memory.cache_info().currsize > 0 and keep_freed_memory()
