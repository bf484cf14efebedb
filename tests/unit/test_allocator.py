"""keep_freed_memory: after it, repeated calls that allocate large temporaries reuse the
process's memory instead of faulting fresh pages in each time."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gaqtool.allocator import keep_freed_memory

STEPS = """
import resource, sys, warnings
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(1)
if sys.argv[1] == "keep":
    from gaqtool.allocator import keep_freed_memory
    assert keep_freed_memory()
from gaqtool.data.spec import resolve_data
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import predict
model = load_model(None).model                      # the embedded model, 8 aspirins per call
frames = resolve_data("rmd17:aspirin", "test").frames.subset(range(8))
for _ in range(3):
    predict(model, frames, batch_size=8)
faults = []
for _ in range(3):  # the fewest of three calls: the heap may still grow once after warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    predict(model, frames, batch_size=8)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(min(faults))
"""


def _page_faults(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                            timeout=120, check=True)
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_memory_is_reused_across_calls():
    default, kept = _page_faults("default"), _page_faults("keep")
    assert default > 5000            # measured 15k-49k fresh 4 KiB pages per call by default
    assert kept < default / 10       # measured 0-3 (AVX2 machine) and 4-5 (AVX-512 one)


def test_keep_freed_memory_is_idempotent():
    assert keep_freed_memory() == keep_freed_memory()


def test_freed_memory_kept_says_what_the_process_did():
    result = subprocess.run([sys.executable, "-c", "from gaqtool.allocator import freed_memory_kept, "
                             "keep_freed_memory as k; a = freed_memory_kept(); k(); print(a, freed_memory_kept())"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["False", str(sys.platform.startswith("linux"))]
