"""profile_cpu: allocation events recorded, and no profiler lines on the process's stderr."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import torch
from gaqtool.profiling import profile_cpu
with profile_cpu(profile_memory=True) as prof:
    x = torch.ones(1000) + 1
events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
assert sum(e.nbytes() for e in events if e.nbytes() > 0) >= 4000, events
import sys; print("still-visible", file=sys.stderr)
"""


def test_profile_cpu_records_allocations_and_keeps_stderr_clean():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "still-visible" in result.stderr            # stderr itself is restored
    assert "profiler_start" not in result.stderr and "USDT" not in result.stderr, result.stderr
