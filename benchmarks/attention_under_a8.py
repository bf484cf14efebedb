"""Normalized (cosine) vs plain dot-product attention under activation quantization.

Each parent is compared with its own FP32 numbers: force MAE ratio of GAQ PTQ at W8A8 and W4A8
(and of W8 weight-only, to separate weight from activation rounding), on rMD17 test frames.

    python benchmarks/attention_under_a8.py --dot-model runs/aspirin_dot.pt --rmd17-dir ../shared/data/rmd17
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.checkpoint import default_model_path
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.workflow import quantize_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cosine-model", type=Path, default=default_model_path())
    parser.add_argument("--dot-model", type=Path, required=True)
    parser.add_argument("--rmd17-dir", type=Path, default=None)
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| parent | FP32 force MAE (meV/A) | W8 weight-only / FP32 | GAQ W8A8 / FP32 | GAQ W4A8 / FP32 |")
    print("|---|---:|---:|---:|---:|")
    for name, path in (("cosine attention", args.cosine_model), ("dot-product attention", args.dot_model)):
        parent = load_model(path)
        calib = resolve_data("rmd17", "train", args.rmd17_dir, parent.molecule).frames
        test = resolve_data("rmd17", "test", args.rmd17_dir, parent.molecule).frames
        frames = test.subset(range(0, len(test), max(1, len(test) // args.frames)))
        fp32 = accuracy_metrics(predict(parent.model, frames), frames)["force_mae_mev_a"]
        ratios = []
        for bits, method in (("w8", "weight-only"), ("w8a8", "gaq"), ("w4a8", "gaq")):
            model = quantize_loaded(parent.model, QuantConfig.from_preset(bits, method=method), calib)[0]
            ratios.append(accuracy_metrics(predict(model, frames), frames)["force_mae_mev_a"] / fp32)
        print(f"| {name} ({path.name}) | {fp32:.2f} | " + " | ".join(f"{r:.3f}" for r in ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
