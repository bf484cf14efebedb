"""How much of FP32 energy + forces is matrix products at all: the Amdahl bound on what int8
GEMMs can buy for the reference potential (against a 2x speed-up target).

    python benchmarks/gemm_share.py [--threads 2] [--batch-size 32] [--repeats 3]

One profiled energy + forces call (after warm-up) of the embedded FP32 model on a batch of
aspirins, repeated; the self CPU time of every matrix-product op (mm, addmm, bmm, baddbmm,
matmul, linear, _int_mm) against the total. With a fraction f of the time in GEMMs that run s
times faster, the whole call runs 1 / ((1 - f) + f / s) times faster; s = inf bounds any kernel.
s = 3.5 and 5 are PERF.md's measured raw `torch._int_mm` ratios for these shapes (before any
activation quantization, which costs extra). Profiler overhead inflates small ops somewhat.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from gaqtool.cli.bench import _freeze, bench_systems
from gaqtool.data.frames import read_npz
from gaqtool.data.spec import sample_path
from gaqtool.io.loading import load_model
from gaqtool.potential import energy_and_forces

GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_int_mm", "aten::addbmm"}
KERNEL_SPEEDUPS = (3.5, 5.0, float("inf"))


def gemm_fraction(model, batch) -> tuple[float, dict[str, float], float]:
    """(GEMM share of self CPU time, GEMM ms by op, total ms) of one energy + forces call."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        energy_and_forces(model, batch)
    ops = prof.key_averages()
    total = sum(a.self_cpu_time_total for a in ops)
    gemm = {a.key: a.self_cpu_time_total / 1e3 for a in ops if a.key in GEMM_OPS}
    return sum(gemm.values()) * 1e3 / total, gemm, total / 1e3


def amdahl(fraction: float, speedup: float) -> float:
    return 1.0 / ((1.0 - fraction) + fraction / speedup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="Also write the result as JSON.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = _freeze(load_model(None).model)
    systems = bench_systems(read_npz(sample_path("test")), model.cutoff, args.batch_size, 1, 8.0)[:2]
    result = {"threads": torch.get_num_threads(), "systems": []}
    for name, batch, _ in systems:
        for _ in range(2):
            energy_and_forces(model, batch)
        runs = [gemm_fraction(model, batch) for _ in range(args.repeats)]
        fraction = statistics.median(r[0] for r in runs)
        row = {"system": name, "gemm_fraction": fraction, "gemm_ms_by_op": runs[-1][1],
               "profiled_total_ms": statistics.median(r[2] for r in runs),
               "max_speedup": {str(s): amdahl(fraction, s) for s in KERNEL_SPEEDUPS}}
        result["systems"].append(row)
        bounds = ", ".join(f"{s:g}x kernels -> {amdahl(fraction, s):.2f}x" for s in KERNEL_SPEEDUPS)
        print(f"{name}: GEMMs {100 * fraction:.1f}% of {row['profiled_total_ms']:.0f} ms "
              f"({', '.join(f'{k} {v:.0f} ms' for k, v in row['gemm_ms_by_op'].items())}); "
              f"end-to-end bound: {bounds}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
