"""Weight rounding on the embedded model: nearest vs GPTQ, with and without the derivative rows.

Every variant quantizes the embedded aspirin model with the same config (default: W4 weight-only,
MSE-clipped per-channel scales) and differs only in how the integers are chosen; force and energy
MAE on test frames. GPTQ settings are the module constants of ``gaqtool.quant.gptq``, set here
per variant ("tw" = TANGENT_WEIGHT, "dirs" = DIRECTIONS, "seed" = SEED of the displacements).

    python benchmarks/gptq_ablation.py --rmd17-dir ../shared/data/rmd17 --frames 1000
    python benchmarks/gptq_ablation.py --bits w4a8
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.atomic import atomic_write
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.quant import gptq
from gaqtool.workflow import quantize_loaded

# (name, weight_rounding, TANGENT_WEIGHT, DIRECTIONS, SEED)
VARIANTS = [("nearest", "nearest", None, None, None),
            ("gptq, no derivative rows", "gptq", 0.0, 1, 0)] + \
           [(f"gptq tw {tw} dirs 4 seed {seed}", "gptq", tw, 4, seed) for tw in (0.5,) for seed in (0, 1, 2, 3)] + \
           [(f"gptq tw {tw} dirs 4 seed 0", "gptq", tw, 4, 0) for tw in (0.3, 0.7)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, default=None)
    parser.add_argument("--bits", default="w4", help="preset, e.g. w4 (weight-only) or w4a8")
    parser.add_argument("--frames", type=int, default=200, help="test frames")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gptq_ablation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    calibration = resolve_data("rmd17", "train", args.rmd17_dir, loaded.molecule)
    test = resolve_data("rmd17", "test", args.rmd17_dir, loaded.molecule)
    frames = test.frames.subset(range(min(args.frames, len(test.frames))))
    print(f"# {calibration.note}\n# {test.note}; {len(frames)} frames; {args.bits}", flush=True)
    defaults = (gptq.TANGENT_WEIGHT, gptq.DIRECTIONS, gptq.SEED)
    fp32 = accuracy_metrics(predict(loaded.model, frames), frames)
    rows = {"fp32": fp32}
    print(f"{'fp32':32s} E {fp32['energy_mae_mev']:7.2f} meV  F {fp32['force_mae_mev_a']:7.2f} meV/A", flush=True)
    for name, rounding, tw, dirs, seed in VARIANTS:
        gptq.TANGENT_WEIGHT, gptq.DIRECTIONS, gptq.SEED = (tw, dirs, seed) if tw is not None else defaults
        started = time.perf_counter()
        model, _ = quantize_loaded(loaded.model, QuantConfig.from_preset(args.bits, weight_rounding=rounding),
                                   calibration.frames)
        seconds = time.perf_counter() - started
        metrics = accuracy_metrics(predict(model, frames), frames)
        rows[name] = {**metrics, "quantize_seconds": seconds}
        print(f"{name:32s} E {metrics['energy_mae_mev']:7.2f} meV  F {metrics['force_mae_mev_a']:7.2f} meV/A"
              f"  ({seconds:.1f} s)", flush=True)
    gptq.TANGENT_WEIGHT, gptq.DIRECTIONS, gptq.SEED = defaults
    document = json.dumps({"bits": args.bits, "frames": len(frames), "threads": args.threads,
                           "results": rows}, indent=1)
    atomic_write(args.out, lambda tmp: tmp.write_text(document))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
