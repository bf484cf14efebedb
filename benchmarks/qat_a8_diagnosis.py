"""Which activation quantizers cost accuracy after weights-first QAT (W4A8, embedded model).

Runs QAT with weights only for all but the last epoch (`activation_warmup = epochs - 1`), then
evaluates the converted model on 200 test frames (every 5th) with all A8 quantizers on, with
l>0 ones off, with all off, and with one module's input quantizers on at a time (50 frames).

    python benchmarks/qat_a8_diagnosis.py --rmd17-dir ../shared/data/rmd17 --epochs 6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import rmd17_protocol
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.qat import QATOptions, run_qat, set_activation_quantization, set_vector_quantization
from gaqtool.quant.activation import ActivationQuantizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    train, val, test = rmd17_protocol(loaded.molecule, args.rmd17_dir)
    test = test.subset(range(0, 1000, 5))
    warmup = args.epochs - 1
    options = QATOptions(epochs=args.epochs, activation_warmup=warmup, vector_warmup=warmup, learning_rate=args.lr)
    model = run_qat(loaded.model, QuantConfig.from_preset("w4a8", weight_clip="minmax"), train, val, train,
                    options).model

    def force_mae(frames=test) -> float:
        return accuracy_metrics(predict(model, frames), frames)["force_mae_mev_a"]

    print(f"FP32: {accuracy_metrics(predict(loaded.model, test), test)['force_mae_mev_a']:.1f} meV/A")
    print(f"all A8 quantizers on: {force_mae():.1f} meV/A")
    set_vector_quantization(model, False)
    print(f"l>0 quantizers off: {force_mae():.1f} meV/A")
    set_vector_quantization(model, True)
    set_activation_quantization(model, False)
    print(f"all activation quantizers off (W4 only): {force_mae():.1f} meV/A")
    few = test.subset(range(0, 200, 4))
    for name, module in model.named_modules():
        quantizers = [q for q in getattr(module, "input_quantizers", []) if isinstance(q, ActivationQuantizer)]
        if quantizers:
            for q in quantizers:
                q.mode = "quantize"
            print(f"only {name}: {force_mae(few):.1f} meV/A (50 frames)", flush=True)
            for q in quantizers:
                q.mode = "off"


if __name__ == "__main__":
    main()
