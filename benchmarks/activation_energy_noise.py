"""How much energy noise 8-bit activation grids add, and where: gaq W8A8 (8-bit weights, so the
weights add almost nothing), energies of 200 test frames (every 5th) against the FP32 parent.

    python benchmarks/activation_energy_noise.py --rmd17-dir ../shared/data/rmd17 --out benchmarks/results/activation_energy_noise.json

"noise" is the standard deviation over frames of E_quantized - E_FP32 (meV, offset-free: the
mean difference is a constant the energy correction removes). Rows:
  - every activation grid off (weights only) and on, with each calibration observer;
  - the int8 kernels' dynamic per-row grids in place of the static per-channel ones;
  - one activation quantizer on at a time;
  - a few groups of quantizers widened to 16 bits;
and for every quantizer the median over its scalar channels of (calibrated range / std), which
is 3.46 for a uniform distribution and much larger when a few outliers set the range.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
from pathlib import Path

import numpy as np
import torch

from gaqtool.config import QuantConfig
from gaqtool.data.graph import iterate_batches
from gaqtool.data.spec import rmd17_protocol
from gaqtool.io.loading import load_model
from gaqtool.kernels.int8 import disable_integer_kernels, enable_integer_kernels
from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.apply import activation_quantizers, calibrate
from gaqtool.workflow import calibration_subset, quantize_loaded

WIDENED = [["readout_*"], ["*radial.hidden.0*"], ["*post_linear*"], ["readout_*", "*radial.hidden.0*"],
           ["readout_*", "*radial.hidden.0*", "*post_linear*"]]


@torch.no_grad()
def energies(model: torch.nn.Module, frames) -> np.ndarray:
    """Energies (eV) of ``frames``, shape (num_frames,)."""
    return torch.cat([model(b) for b in iterate_batches(frames, 25, model.cutoff)]).double().numpy()


def quantizers(model: torch.nn.Module) -> list[tuple[str, ActivationQuantizer]]:
    """(module path, quantizer) of every activation quantizer, in module order."""
    return [(n, q) for n, q in model.named_modules() if isinstance(q, ActivationQuantizer)]


def range_over_std(model: torch.nn.Module, frames) -> dict[str, float]:
    """Median over each quantizer's scalar input channels of (max - min) / std on ``frames``."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, q in quantizers(model):
        mask = torch.tensor([ir.l == 0 for mul, ir in q.irreps for _ in range(mul * ir.dim)])
        if mask.any():
            hooks.append(q.register_forward_pre_hook(
                lambda _m, inp, n=name, k=mask: seen.setdefault(n, []).append(inp[0].reshape(-1, k.numel())[:, k])))
    energies(model, frames)
    for h in hooks:
        h.remove()
    out = {}
    for name, chunks in seen.items():
        x = torch.cat(chunks)
        spread = (x.amax(0) - x.amin(0)) / x.std(0).clamp_min(1e-12)
        out[name] = float(spread.median())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rmd17-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="w8a8")
    parser.add_argument("--out", type=Path, default=None, help="Also write the rows as JSON.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(None)
    train, _, test = rmd17_protocol(loaded.molecule, args.rmd17_dir)
    test = test.subset(range(0, 1000, 5))
    reference = energies(loaded.model, test)
    rows: list[dict] = []

    def record(label: str, model: torch.nn.Module, **extra) -> None:
        difference = (energies(model, test) - reference) * 1000.0
        rows.append({"row": label, "noise_mev": float(difference.std()), **extra})
        print(f"{label:60s} noise {difference.std():6.2f} meV", flush=True)

    for observer in ("minmax", "mse", "percentile"):
        model, _ = quantize_loaded(loaded.model, QuantConfig.from_preset(args.preset, observer=observer), train)
        record(f"all grids on, observer {observer}", model)
    config = QuantConfig.from_preset(args.preset)
    model, _ = quantize_loaded(loaded.model, config, train)
    calibration = calibration_subset(config, train)
    spreads = range_over_std(model, calibration)
    enable_integer_kernels(model, compile=False, require_speedup=False)
    record("int8 kernels: dynamic per-row grids where switched", model)
    disable_integer_kernels(model)
    for q in activation_quantizers(model):
        q.mode = "off"
    record("every activation grid off (weights only)", model)
    for name, q in quantizers(model):
        q.mode = "quantize"
        record(f"only {name}", model, irreps=str(q.irreps), range_over_std=spreads.get(name))
        q.mode = "off"
    for patterns in WIDENED:
        for name, q in quantizers(model):
            q.num_bits = 16 if any(fnmatch.fnmatch(name, p) for p in patterns) else 8
        calibrate(model, iterate_batches(calibration, 8, model.cutoff), lambda m, b: m(b))
        record(f"16-bit grids at {patterns}", model)
    if args.out:
        args.out.write_text(json.dumps({"preset": args.preset, "frames": len(test), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
