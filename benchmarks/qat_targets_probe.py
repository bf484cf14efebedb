"""QAT targets probe: W4A8 PTQ vs short QAT fitted to the FP32 teacher vs fitted to DFT labels.

Same schedule for both (3 epochs, vector warm-up 1, lr 1e-4, every 4th training frame = 238
frames, 1 thread), evaluated on 200 test frames (every 5th) against the DFT labels; LEE on 10
of them x 2 rotations.

    python benchmarks/qat_targets_probe.py --rmd17-dir ../shared/data/rmd17
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import rmd17_protocol
from gaqtool.io.atomic import atomic_write
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.qat import QATOptions, run_qat
from gaqtool.workflow import quantize_loaded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--bits", default="w4a8")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/qat_targets_probe.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    train, val, test = rmd17_protocol(loaded.molecule, args.rmd17_dir)
    test = test.subset(range(0, 1000, 5))
    lee_frames = test.subset(range(10))
    config = QuantConfig.from_preset(args.bits)
    models = {"FP32": loaded.model, f"PTQ {args.bits}": quantize_loaded(loaded.model, config, train)[0]}
    seconds = {}
    for targets in ("teacher", "labels"):
        began = time.perf_counter()
        options = QATOptions(epochs=args.epochs, vector_warmup=1, learning_rate=args.lr, targets=targets)
        models[f"QAT {args.bits} ({targets})"] = run_qat(loaded.model, config, train.subset(range(0, 950, 4)),
                                                         val, train, options).model
        seconds[targets] = time.perf_counter() - began
    rows = {}
    for name, model in models.items():
        acc = accuracy_metrics(predict(model, test), test)
        rows[name] = {"energy_mae_mev": acc["energy_mae_mev"], "force_mae_mev_a": acc["force_mae_mev_a"],
                      "lee_force_mean_mev_a": local_equivariance_error(model, lee_frames, 2, 0)["force_mean_mev_a"]}
    fp32_force = rows["FP32"]["force_mae_mev_a"]
    print("| model | energy MAE (meV) | force MAE (meV/A) | F / FP32 | LEE force mean (meV/A) |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['energy_mae_mev']:.1f} | {r['force_mae_mev_a']:.1f} | "
              f"{r['force_mae_mev_a'] / fp32_force:.2f} | {r['lee_force_mean_mev_a']:.3g} |")
    print(f"\nQAT seconds: {json.dumps({k: round(v, 1) for k, v in seconds.items()})}")
    text = json.dumps({"settings": vars(args) | {"rmd17_dir": str(args.rmd17_dir), "out": str(args.out)},
                       "results": rows, "qat_seconds": seconds}, indent=2)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))


if __name__ == "__main__":
    main()
