"""Where the LEE of activation-quantized models comes from: the direction rounding.

W4A8 on the embedded model, one row per way of rounding l>0 directions (norms and scalars are
always rounded on 8-bit grids): naive (components on one per-tensor grid), MDDQ with the
global component grid at 8 and 12 bits, fp16 directions, the 8-bit grid in equivariant local
frames (the default), and directions left exact (a probe, not a mode: the remaining error is
what rounding invariant norms and scalars costs under float32 noise).

    python benchmarks/lee_direction_sweep.py --rmd17-dir ../shared/data/rmd17
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from unittest import mock

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.atomic import atomic_write
from gaqtool.io.loading import load_model
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.quant import mddq
from gaqtool.workflow import quantize_loaded

ROWS = {
    "naive": dict(method="naive"),
    "MDDQ component 8-bit": dict(direction_mode="component", direction_bits=8),
    "MDDQ component 12-bit": dict(direction_mode="component", direction_bits=12),
    "MDDQ fp16 directions": dict(direction_mode="fp16"),
    "MDDQ frame 8-bit (default)": dict(direction_mode="frame", direction_bits=8),
    "MDDQ exact directions (probe)": dict(direction_mode="component"),
}


def exact_directions(u: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Stand-in for the component grid that returns the unit vector unrounded."""
    return u.detach() / torch.linalg.vector_norm(u.detach(), dim=-1, keepdim=True).clamp_min(1e-30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--bits", default="w4a8")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--rotations", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lee_direction_sweep.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    calib = resolve_data("rmd17", "train", args.rmd17_dir, loaded.molecule).frames
    test = resolve_data("rmd17", "test", args.rmd17_dir, loaded.molecule).frames.subset(range(args.frames))
    results = {"FP32 floor": local_equivariance_error(loaded.model, test, args.rotations, 0)}
    for name, options in ROWS.items():
        model, _ = quantize_loaded(loaded.model, QuantConfig.from_preset(args.bits, **options), calib)
        if "probe" in name:
            with mock.patch.object(mddq, "quantize_direction_component", exact_directions):
                results[name] = local_equivariance_error(model, test, args.rotations, 0)
        else:
            results[name] = local_equivariance_error(model, test, args.rotations, 0)
        print(f"{name}: {results[name]['force_mean_mev_a']:.4g} meV/A", flush=True)
    naive = results["naive"]["force_mean_mev_a"]
    print(f"\n| {args.bits} activations | LEE force mean (meV/A) | max | naive / this |")
    print("|---|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {r['force_mean_mev_a']:.3g} | {r['force_max_mev_a']:.3g} | {naive / r['force_mean_mev_a']:.1f} |")
    print(f"\n{args.frames} test frames x {args.rotations} Haar rotations (seed 0), {args.threads} thread(s)")
    text = json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))


if __name__ == "__main__":
    main()
