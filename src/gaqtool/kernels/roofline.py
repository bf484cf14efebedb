"""Achieved FLOP/s of the fused convolution in a model, and this CPU's peak, for reports.

FLOPs: :meth:`UvuConvolution.flops_per_edge` (the C kernels' inner loops, 2 per multiply or
multiply-add) times the edges of the batch, for every fused convolution of the model. Time: the
profiler's time inside the kernels' autograd Function (forward and backward, their zero-fills
included; wall clock, so waiting for a descheduled thread counts) in one energy + forces call. Peaks: the nominal FP32 peak, threads x clock x 64 (two AVX-512 FMA units
of 16 lanes; 32 without AVX-512, i.e. two AVX2 FMA units), with the clock from /proc/cpuinfo,
and the rate of a 1024^3 float32 ``torch.mm`` measured here (a practical peak).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable

import torch

from gaqtool.kernels.uvu_convolution import UvuConvolution

__all__ = ["convolution_flops", "convolution_seconds", "nominal_peak_flops", "gemm_peak_flops"]

KERNEL_EVENTS = ("_NativeUvuConvolution", "_NativeUvuConvolutionBackward")


def convolution_flops(model: torch.nn.Module, num_edges: int, backward: bool = True) -> int:
    """FLOPs of every fused convolution of ``model`` for ``num_edges`` edges (0 if none)."""
    return sum(m.flops_per_edge(backward) * num_edges for m in model.modules()
               if isinstance(m, UvuConvolution))


def convolution_seconds(run: Callable[[], object]) -> float:
    """Seconds inside the fused kernels' Function during one ``run()`` (0.0 if they did not run)."""
    from gaqtool.profiling import profile_cpu

    with profile_cpu() as prof:
        run()
    return sum(e.cpu_time_total for e in prof.key_averages() if e.key in KERNEL_EVENTS) * 1e-6


def _clock_ghz() -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return float(line.split(":", 1)[1]) / 1e3
    return None


def nominal_peak_flops(threads: int, avx512: bool) -> float | None:
    """threads x clock (GHz, /proc/cpuinfo) x FP32 FLOPs per cycle, in FLOP/s (None: no clock)."""
    clock = _clock_ghz()
    return None if clock is None else threads * clock * 1e9 * (64 if avx512 else 32)


def gemm_peak_flops(size: int = 1024, repeats: int = 5) -> float:
    """Best FLOP/s of ``size``^3 float32 ``torch.mm`` over ``repeats`` runs (after one warm-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best
