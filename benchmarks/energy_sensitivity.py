"""Where the energy error of activation quantization comes from: gaq W8A8 and W4A8 with one
group of modules kept in FP32 at a time; energy / force MAE on 100 test frames (every 10th).

    python benchmarks/energy_sensitivity.py --rmd17-dir ../shared/data/rmd17
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import rmd17_protocol
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.workflow import quantize_loaded

KEPT = [(), ("readout_*",), ("readout_out",), ("layers.2.*",), ("layers.0.*",), ("embedding",)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", nargs="+", default=["w8a8", "w4a8"])
    parser.add_argument("--out", type=Path, default=None, help="Also write the rows as JSON.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    train, _, test = rmd17_protocol(loaded.molecule, args.rmd17_dir)
    test = test.subset(range(0, 1000, 10))
    fp32 = accuracy_metrics(predict(loaded.model, test), test)
    rows = [{"model": "fp32", "energy_mae_mev": fp32["energy_mae_mev"], "force_mae_mev_a": fp32["force_mae_mev_a"]}]
    print(f"FP32: E {fp32['energy_mae_mev']:.2f} meV, F {fp32['force_mae_mev_a']:.2f} meV/A", flush=True)
    for preset in args.presets:
        for keep in KEPT:
            config = QuantConfig.from_preset(preset, keep_fp32=keep)
            acc = accuracy_metrics(predict(quantize_loaded(loaded.model, config, train)[0], test), test)
            rows.append({"model": f"gaq {preset}", "kept_fp32": list(keep),
                         "energy_mae_mev": acc["energy_mae_mev"], "force_mae_mev_a": acc["force_mae_mev_a"]})
            print(f"{preset} kept FP32 {list(keep) or 'none'}: E {acc['energy_mae_mev']:.2f} meV, "
                  f"F {acc['force_mae_mev_a']:.2f} meV/A", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
