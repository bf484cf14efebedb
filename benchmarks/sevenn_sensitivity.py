"""Where SevenNet-0's W4 error comes from: deviation from FP32 on the universal test part.

Two probes, both weight-only (so no activation rounding mixes in):

- ``variants``: whole-model quantization with QuantConfig options given as JSON, e.g.

      python benchmarks/sevenn_sensitivity.py variants \\
          'w4={}' 'w4_nearest={"weight_rounding": "nearest"}' \\
          'w4_g16={"group_size": 16}' 'w4_readout8={"keep_wide": ["role:readout"]}'

  (``bits`` picks the preset, default w4; ``keep_fp32`` adds to role:species_embedding);
- ``single``: one weighted module at a time at W4 (or the first ``--bits``), rounded to nearest,
  every other module FP32 (on 8 crystals and 3 aspirin frames of the test part), to rank the
  modules;
- ``species-offset``: whether per-element energy offsets, fitted on the calibration part, would
  remove the energy error that the default single offset (``energy_correction``) leaves: fitted
  from the atomic energies (mean FP32 - quantized per element) or by least squares on the total
  energies, measured on the test crystals and on the held-out chemistries of
  ``sevenn_generalization.py`` (elements never calibrated keep the single offset), e.g.

      python benchmarks/sevenn_sensitivity.py species-offset --bits w8 --bits w4

Prints mean |dE| per atom and mean |dF| per component against FP32, for crystals and molecules.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
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


def single(fp32, bits: str = "w4") -> None:
    test = resolve_data("universal", "test").frames
    test = test.subset(list(range(0, 16, 2)) + [16, 17, 18])
    reference = predict(fp32, test)
    targets = [p for p, m in fp32.named_modules() if p and _kind_of(m) and any(True for _ in m.parameters())]
    for target in targets:
        started = time.perf_counter()
        config = QuantConfig.from_preset(bits, method="weight-only", weight_rounding="nearest",
                                         keep_fp32=tuple(p for p in targets if p != target))
        quantized, _ = quantize_model(copy.deepcopy(fp32), config)
        size = sum(p.numel() for p in fp32.get_submodule(target).parameters())
        print(_line(f"{target} ({size})", deviation_metrics(predict(quantized, test), reference, test),
                    time.perf_counter() - started), flush=True)


def species_offset(fp32, presets: list[str]) -> None:
    import sys
    from pathlib import Path

    import ase.io
    import numpy as np
    import sevenn._keys as keys

    from gaqtool.data.frames import read_frames
    from gaqtool.data.graph import iterate_batches

    sys.path.insert(0, str(Path(__file__).parent))
    from sevenn_generalization import HELD_OUT, strained_rattled

    calib, test = resolve_data("universal", "train").frames, resolve_data("universal", "test").frames
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "heldout.extxyz"
        ase.io.write(path, strained_rattled(HELD_OUT, seed=777))  # the generalization study's set
        held_out = read_frames(path)

    @torch.no_grad()
    def atomic_energies(model, frames):  # sevenn's per-atom energies plus gaqtool's offset, eV
        out = []
        for batch in iterate_batches(frames, 8, model.cutoff):
            data = model._inputs(batch)
            for _, module in model._steps:
                data = module(data)
            out.append(data[keys.ATOMIC_ENERGY].reshape(-1).double() + model.energy_offset)
        return torch.cat(out).numpy()

    def crystal_mae(difference, frames):  # mean |dE| per atom over the periodic frames, meV
        natoms = frames.num_atoms.astype(float)
        periodic = np.array([bool(np.any(frames.periodic(i))) for i in range(len(frames))])
        return 1e3 * np.mean(np.abs(difference / natoms)[periodic])

    for preset in presets:
        quantized, _ = quantize_loaded(fp32, QuantConfig.from_preset(preset, method="weight-only"), calib)
        gap = {name: predict(fp32, frames).energies - predict(quantized, frames).energies
               for name, frames in (("calib", calib), ("test", test), ("held_out", held_out))}
        numbers = np.concatenate(calib.numbers)
        per_atom = atomic_energies(fp32, calib) - atomic_energies(quantized, calib)
        mean_per_element = {int(z): per_atom[numbers == z].mean() for z in np.unique(numbers)}
        elements = sorted(mean_per_element)
        counts = np.array([[np.sum(n == z) for z in elements] for n in calib.numbers], float)
        natoms = calib.num_atoms.astype(float)[:, None]
        a = counts / natoms  # ridge 1e-3: several elements only ever appear together
        fitted = np.linalg.solve(a.T @ a + 1e-3 * np.eye(len(elements)), a.T @ (gap["calib"] / natoms[:, 0]))
        tables = {"atomic energies": mean_per_element, "least squares": dict(zip(elements, fitted))}
        for name, frames in (("test", test), ("held_out", held_out)):
            line = [f"{preset} {name:8s} single offset {crystal_mae(gap[name], frames):6.2f}"]
            for label, table in tables.items():
                shift = np.array([sum(table.get(int(z), 0.0) for z in n) for n in frames.numbers])
                line.append(f"{label} {crystal_mae(gap[name] - shift, frames):6.2f}")
            print("  ".join(line) + "  (crystals, meV/atom)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=["variants", "single", "species-offset"])
    parser.add_argument("specs", nargs="*", help="name=JSON options (variants)")
    parser.add_argument("--model", default="sevenn:7net-0")
    parser.add_argument("--bits", action="append", help="presets for species-offset (default w8, w4); single takes the first (default w4)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_intermixed_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    fp32 = load_model(args.model).model
    if args.probe == "variants":
        variants(fp32, args.specs)
    elif args.probe == "single":
        single(fp32, (args.bits or ["w4"])[0])
    else:
        species_offset(fp32, args.bits or ["w8", "w4"])


if __name__ == "__main__":
    main()
