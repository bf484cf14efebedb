"""``torch.profiler`` without the profiler library's own lines on stderr.

Torch's CPU profiler (kineto) prints ``USDT:... profiler_start`` / ``profiler_stop`` from C++
straight to file descriptor 2 when a profile starts and stops, which lands in the middle of
``gaqtool bench`` output. Only the start and the stop are silenced; the profiled call itself
writes to stderr as usual.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

__all__ = ["profile_cpu"]


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:   # no usable file descriptor 2 (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def profile_cpu(profile_memory: bool = False):
    """``torch.profiler.profile`` of CPU activity (``profile_memory``: allocation events too)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=profile_memory)
    with _native_stderr_silenced():
        prof.__enter__()
    try:
        yield prof
    finally:
        with _native_stderr_silenced():
            prof.__exit__(None, None, None)
