"""What the int8 kernels cost in accuracy on a quantized SevenNet file.

For each file: its deviation from the FP32 parent on the universal test part (16 crystals and
8 aspirin frames), run three ways: the file's own float graph (weights dequantized once, what md
and GAQCalculator run), int8 GEMMs in the forward only (dynamic per-row int8 inputs of the radial
networks, float backward), and int8 GEMMs in the backward too (the gradient rows quantized the
same way: what `gaqtool bench --config int8` times); and the force MAE against DFT on the 200
shipped rMD17 aspirin test frames, with its ratio to the FP32 parent's.

    python benchmarks/sevenn_int8_accuracy.py w8.safetensors w4.safetensors \\
        --out benchmarks/results/sevenn_int8_accuracy.json
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", type=Path, help="quantized SevenNet .safetensors files")
    parser.add_argument("--parent", default="sevenn:7net-0", help="the FP32 model the files come from")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)

    from gaqtool.data.spec import resolve_data
    from gaqtool.io.atomic import atomic_write
    from gaqtool.io.loading import load_model
    from gaqtool.kernels.int8 import enable_integer_kernels
    from gaqtool.metrics.accuracy import accuracy_metrics, deviation_metrics, predict

    test = resolve_data("universal", "test").frames
    aspirin = resolve_data("rmd17:aspirin", "test").frames
    parent = load_model(args.parent).model
    reference, rows = predict(parent, test), []
    fp32_dft = accuracy_metrics(predict(parent, aspirin), aspirin)["force_mae_mev_a"]
    print(f"FP32 parent: aspirin force MAE vs DFT {fp32_dft:.1f} meV/A", flush=True)
    for path in args.files:
        loaded = load_model(path)
        for label, integer, backward in (("float graph", False, False), ("int8 forward", True, False),
                                         ("int8 forward + backward", True, True)):
            model = copy.deepcopy(loaded.model)
            if integer:
                enable_integer_kernels(model, integer_backward=backward, require_speedup=False)
            deviation = deviation_metrics(predict(model, test), reference, test)
            c, m = deviation["crystals"], deviation["molecules"]
            dft = accuracy_metrics(predict(model, aspirin), aspirin)["force_mae_mev_a"]
            row = {"file": path.name, "run": label,
                   "crystals_dF_meV_A": c["force_mae_mev_a"], "crystals_dE_meV_atom": c["energy_mae_mev_per_atom"],
                   "aspirin_dF_meV_A": m["force_mae_mev_a"], "aspirin_dE_meV_atom": m["energy_mae_mev_per_atom"],
                   "aspirin_force_mae_vs_dft_meV_A": dft, "vs_fp32": dft / fp32_dft}
            rows.append(row)
            print(f"{path.name:20s} {label:24s} crystals dF {row['crystals_dF_meV_A']:6.2f} "
                  f"dE {row['crystals_dE_meV_atom']:6.2f} | aspirin dF {row['aspirin_dF_meV_A']:6.2f} "
                  f"dE {row['aspirin_dE_meV_atom']:6.2f} | vs DFT {dft:6.1f} ({dft / fp32_dft:.3f}x)", flush=True)
    result = {"command": "python benchmarks/sevenn_int8_accuracy.py " + " ".join(str(f) for f in args.files),
              "threads": args.threads, "units": "mean |dF| per component meV/A, mean |dE| per atom meV, "
              "against the FP32 parent", "fp32_aspirin_force_mae_vs_dft_meV_A": fp32_dft, "rows": rows}
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))


if __name__ == "__main__":
    main()
