"""QAT schedule probe: short W4A8 QAT runs on the embedded model, one per JSON spec.

Each spec holds QuantConfig options plus a "qat" dict of QATOptions overrides on top of the
probe schedule (3 epochs, vector warm-up 1, lr 1e-4, every 4th training frame = 238 frames);
the force / energy MAE is measured on 200 test frames (every 5th) against the DFT labels.

    python benchmarks/qat_schedule_probe.py --rmd17-dir ../shared/data/rmd17 \\
        '{"weight_clip": "minmax"}' '{"weight_clip": "minmax", "qat": {"activation_warmup": 2, "vector_warmup": 2}}'
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import rmd17_protocol
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import accuracy_metrics, predict
from gaqtool.qat import QATOptions, run_qat

PROBE_SCHEDULE = {"epochs": 3, "vector_warmup": 1, "learning_rate": 1e-4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="JSON: QuantConfig options, plus 'qat': QATOptions overrides")
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--bits", default="w4a8")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    train, val, test = rmd17_protocol(loaded.molecule, args.rmd17_dir)
    test = test.subset(range(0, 1000, 5))
    for spec in args.specs:
        options = json.loads(spec)
        qat = {**PROBE_SCHEDULE, **options.pop("qat", {})}
        config = QuantConfig.from_preset(args.bits, **options)
        began = time.perf_counter()
        result = run_qat(loaded.model, config, train.subset(range(0, 950, 4)), val, train, QATOptions(**qat))
        acc = accuracy_metrics(predict(result.model, test), test)
        print(f"{spec}: E {acc['energy_mae_mev']:.1f} meV, F {acc['force_mae_mev_a']:.1f} meV/A "
              f"({time.perf_counter() - began:.0f} s, best epoch {result.best_epoch})", flush=True)


if __name__ == "__main__":
    main()
