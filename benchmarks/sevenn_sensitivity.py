"""Where SevenNet-0's W4 error comes from: deviation from FP32 on the universal test part.

Two probes, both weight-only (so no activation rounding mixes in):

- ``variants``: whole-model quantization with QuantConfig options given as JSON, e.g.

      python benchmarks/sevenn_sensitivity.py variants \\
          'w4={}' 'w4_nearest={"weight_rounding": "nearest"}' \\
          'w4_g16={"group_size": 16}' 'w4_readout8={"keep_wide": ["role:readout"]}'

  (``bits`` picks the preset, default w4; ``keep_fp32`` adds to role:species_embedding);
- ``single``: one weighted module at a time at W4, rounded to nearest, every other module FP32
  (on 8 crystals and 3 aspirin frames of the test part), to rank the modules.

Prints mean |dE| per atom and mean |dF| per component against FP32, for crystals and molecules.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import torch

from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.loading import load_model
from gaqtool.metrics.accuracy import deviation_metrics, predict
from gaqtool.quant.apply import _kind_of, quantize_model
from gaqtool.workflow import quantize_loaded


def _line(name: str, d: dict, seconds: float) -> str:
    c, m = d["crystals"], d["molecules"]
    return (f"{name:36s} crystals dE {c['energy_mae_mev_per_atom']:6.2f} dF {c['force_mae_mev_a']:6.2f} | "
            f"molecules dE {m['energy_mae_mev_per_atom']:6.2f} dF {m['force_mae_mev_a']:6.2f} ({seconds:.0f} s)")


def variants(fp32, specs: list[str]) -> None:
    calib = resolve_data("universal", "train").frames
    test = resolve_data("universal", "test").frames
    reference = predict(fp32, test)
    for spec in specs:
        name, _, text = spec.partition("=")
        options = json.loads(text) if text else {}
        bits = options.pop("bits", "w4")
        if "keep_fp32" in options:
            options["keep_fp32"] = ("role:species_embedding", *options["keep_fp32"])
        started = time.perf_counter()
        quantized, _ = quantize_loaded(fp32, QuantConfig.from_preset(bits, method="weight-only", **options), calib)
        print(_line(name, deviation_metrics(predict(quantized, test), reference, test),
                    time.perf_counter() - started), flush=True)


def single(fp32) -> None:
    test = resolve_data("universal", "test").frames
    test = test.subset(list(range(0, 16, 2)) + [16, 17, 18])
    reference = predict(fp32, test)
    targets = [p for p, m in fp32.named_modules() if p and _kind_of(m) and any(True for _ in m.parameters())]
    for target in targets:
        started = time.perf_counter()
        config = QuantConfig.from_preset("w4", method="weight-only", weight_rounding="nearest",
                                         keep_fp32=tuple(p for p in targets if p != target))
        quantized, _ = quantize_model(copy.deepcopy(fp32), config)
        size = sum(p.numel() for p in fp32.get_submodule(target).parameters())
        print(_line(f"{target} ({size})", deviation_metrics(predict(quantized, test), reference, test),
                    time.perf_counter() - started), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["variants", "single"])
    parser.add_argument("specs", nargs="*", help="name=JSON options (variants)")
    parser.add_argument("--model", default="sevenn:7net-0")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_intermixed_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    fp32 = load_model(args.model).model
    variants(fp32, args.specs) if args.probe == "variants" else single(fp32)


if __name__ == "__main__":
    main()
