"""Which module types carry the W4 weight error: weight-only W4 (MSE clipping) with one group of
modules kept in FP32 at a time, force / energy MAE on 100 test frames (every 10th).

    python benchmarks/w4_sensitivity.py --rmd17-dir ../shared/data/rmd17 [--base '*embedding*']

--base adds patterns kept in FP32 in every row (on top of each row's own); the rows use the
QuantConfig defaults otherwise (GPTQ rounding since 0.1.2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import rmd17_protocol
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.workflow import quantize_loaded

KEPT = [(), ("embedding",), ("readout_*",), ("*.radial.out",), ("*.radial.hidden.*",), ("*.post_linear",),
        ("*.pre_linear",), ("*.query", "*.key"), ("layers.0.*",), ("layers.2.*",)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--base", nargs="*", default=[], help="Patterns kept in FP32 in every row.")
    parser.add_argument("--rows", nargs="*", default=None,
                        help="One row per pattern instead of the built-in groups (plus a row with none).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    train, _, test = rmd17_protocol(loaded.molecule, args.rmd17_dir)
    test = test.subset(range(0, 1000, 10))
    print(f"FP32: F {accuracy_metrics(predict(loaded.model, test), test)['force_mae_mev_a']:.1f} meV/A")
    for keep in KEPT if args.rows is None else [()] + [(r,) for r in args.rows]:
        config = QuantConfig.from_preset("w4", method="weight-only", keep_fp32=tuple(args.base) + keep)
        acc = accuracy_metrics(predict(quantize_loaded(loaded.model, config, train)[0], test), test)
        print(f"kept FP32 {list(args.base) + list(keep) or 'none'}: E {acc['energy_mae_mev']:.1f} meV, "
              f"F {acc['force_mae_mev_a']:.1f} meV/A", flush=True)


if __name__ == "__main__":
    main()
