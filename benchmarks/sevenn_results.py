"""SevenNet results table: gaqtool on the pretrained SevenNet models shipped with sevenn.

For each model: exactness of gaqtool's FP32 path against sevenn's own ASE calculator (molecule
and periodic cells); then weight-only W8 and W4, gaq W4A8 and naive W4A8, each quantized with
gaqtool's defaults on the universal calibration part, and measured on

- the universal test part (strained, rattled crystals of four families and aspirin frames):
  mean |dE| per atom and mean |dF| per component against the FP32 parent, per kind;
- rMD17 aspirin (the shipped 200-frame test sample, or --rmd17-dir): force MAE against DFT and
  its ratio to FP32's;
- LEE (finite Haar rotations, float32 floor of the FP32 model beside it);
- file size against the FP32 tensor bytes and against the sevenn checkpoint (.pth, which also
  holds optimizer state); seconds to quantize (calibration + GPTQ + energy correction).

    python benchmarks/sevenn_results.py --threads 2

writes benchmarks/results/sevenn_results.json and the markdown table
benchmarks/results/sevenn_results.md. Run it alone: it measures seconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gaqtool.config import QuantConfig
from gaqtool.data.frames import Frames
from gaqtool.data.graph import make_batch
from gaqtool.data.spec import resolve_data
from gaqtool.io.atomic import atomic_write
from gaqtool.io.loading import load_model
from gaqtool.io.safetensors_io import file_tensors, save_quantized
from gaqtool.metrics.accuracy import accuracy_metrics, deviation_metrics, predict
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.potential import predict_batch
from gaqtool.workflow import quantize_loaded

VARIANTS = [("weight-only w8", "w8", {}), ("weight-only w4", "w4", {}),
            ("gaq w4a8", "w4a8", {}), ("naive w4a8", "w4a8", dict(method="naive"))]


def exactness(model, modal: str | None, name: str, frames: Frames) -> dict:
    """Max |E - E_sevenn| per atom (eV) and max |F - F_sevenn| (eV/A) over ``frames``."""
    from ase import Atoms
    from sevenn.calculator import SevenNetCalculator

    calculator = SevenNetCalculator(name, modal=modal)
    de, df, ds = 0.0, 0.0, 0.0
    for i in range(len(frames)):
        atoms = Atoms(numbers=frames.numbers[i], positions=frames.positions[i],
                      cell=frames.cell(i), pbc=frames.periodic(i))
        atoms.calc = calculator
        prediction = predict_batch(model, make_batch(frames, [i], model.cutoff), stress=True)
        de = max(de, abs(float(prediction.energies[0]) - atoms.get_potential_energy()) / len(atoms))
        df = max(df, float(np.abs(prediction.forces.detach().numpy() - atoms.get_forces()).max()))
        if atoms.pbc.any():
            s = prediction.stress[0].detach().numpy()
            voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            ds = max(ds, float(np.abs(voigt - atoms.get_stress()).max()))
    return {"max_energy_ev_per_atom": de, "max_force_ev_a": df, "max_stress_ev_a3": ds,
            "structures": len(frames)}


def measure(model, universal: Frames, aspirin: Frames, lee: Frames, rotations: int,
            fp32_preds: dict | None) -> dict:
    preds = {"universal": predict(model, universal), "aspirin": predict(model, aspirin)}
    out = {"aspirin_vs_dft": accuracy_metrics(preds["aspirin"], aspirin),
           "lee": local_equivariance_error(model, lee, rotations, seed=0)}
    if fp32_preds is not None:
        out["vs_fp32"] = deviation_metrics(preds["universal"], fp32_preds["universal"], universal)
        out["aspirin_vs_fp32"] = deviation_metrics(preds["aspirin"], fp32_preds["aspirin"], aspirin)
    return out, preds


def run_model(spec: str, args) -> dict:
    name, _, modal = spec.partition(":")
    modal = modal or None
    started = time.perf_counter()
    loaded = load_model(f"sevenn:{name}", modal=modal)
    fp32 = loaded.model
    load_seconds = time.perf_counter() - started
    universal = resolve_data("universal", "test").frames
    calib = resolve_data("universal", "train").frames
    aspirin_all = resolve_data("rmd17", "test", args.rmd17_dir, "aspirin").frames
    aspirin = aspirin_all.subset(range(min(args.aspirin_frames, len(aspirin_all))))
    lee = universal.subset(list(range(0, 16, 2)) + [16, 17, 18, 19])
    result = {"model": name, "modal": modal, "load_seconds": load_seconds,
              "checkpoint_bytes": loaded.path.stat().st_size,
              "fp32_tensor_bytes": sum(t.numel() * t.element_size() for t in fp32.state_dict().values()),
              "parameters": sum(p.numel() for p in fp32.parameters())}
    result["exactness"] = exactness(fp32, modal, name, universal.subset([0, 5, 9, 12, 16]))
    print(f"{spec}: exactness {result['exactness']}", flush=True)
    result["fp32"], fp32_preds = measure(fp32, universal, aspirin, lee, args.lee_rotations, None)
    result["variants"] = {}
    for label, bits, options in VARIANTS:
        config = QuantConfig.from_preset(bits, **options)
        started = time.perf_counter()
        quantized, plan = quantize_loaded(fp32, config, calib)
        seconds = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            path = save_quantized(Path(tmp) / "q.safetensors", quantized, config, plan, "0" * 64)
            file_bytes = path.stat().st_size
        row, _ = measure(quantized, universal, aspirin, lee, args.lee_rotations, fp32_preds)
        row.update(quantize_seconds=seconds, file_bytes=file_bytes,
                   tensor_bytes=sum(t.numel() * t.element_size() for t in file_tensors(quantized).values()))
        result["variants"][label] = row
        v = row["vs_fp32"]
        print(f"{spec} {label}: crystals dF {v['crystals']['force_mae_mev_a']:.2f} dE "
              f"{v['crystals']['energy_mae_mev_per_atom']:.2f}; aspirin F MAE "
              f"{row['aspirin_vs_dft']['force_mae_mev_a']:.1f}; LEE {row['lee']['force_mean_mev_a']:.4f}; "
              f"{seconds:.0f} s", flush=True)
    return result


def markdown(results: list[dict], threads: int) -> str:
    lines = [f"Measured with `python benchmarks/sevenn_results.py --threads {threads}` "
             f"({threads} threads).", "",
             "| model | variant | crystals dF (meV/A) | crystals dE (meV/atom) | aspirin dF "
             "(meV/A) | aspirin F MAE vs DFT (meV/A) | LEE (meV/A) | file / FP32 tensors | s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        name = r["model"] + (f" ({r['modal']})" if r["modal"] else "")
        fp = r["fp32"]
        lines.append(f"| {name} | FP32 | 0 | 0 | 0 | {fp['aspirin_vs_dft']['force_mae_mev_a']:.1f} | "
                     f"{fp['lee']['force_mean_mev_a']:.4f} | 1 | |")
        for label, row in r["variants"].items():
            v, a = row["vs_fp32"]["crystals"], row["aspirin_vs_fp32"]
            ratio = row["aspirin_vs_dft"]["force_mae_mev_a"] / fp["aspirin_vs_dft"]["force_mae_mev_a"]
            lines.append(
                f"| {name} | {label} | {v['force_mae_mev_a']:.2f} | {v['energy_mae_mev_per_atom']:.2f} | "
                f"{a['force_mae_mev_a']:.2f} | {row['aspirin_vs_dft']['force_mae_mev_a']:.1f} "
                f"({ratio:.3f}x) | {row['lee']['force_mean_mev_a']:.4f} | "
                f"1/{r['fp32_tensor_bytes'] / row['file_bytes']:.2f} | {row['quantize_seconds']:.0f} |")
        e = r["exactness"]
        lines.append("")
        lines.append(f"{name}: FP32 against sevenn's calculator on {e['structures']} structures: "
                     f"max |dE| {e['max_energy_ev_per_atom']:.1e} eV/atom, max |dF| "
                     f"{e['max_force_ev_a']:.1e} eV/A, max |dS| {e['max_stress_ev_a3']:.1e} eV/A^3; "
                     f"checkpoint {r['checkpoint_bytes'] / 1e6:.1f} MB, FP32 tensors "
                     f"{r['fp32_tensor_bytes'] / 1e6:.2f} MB.")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["7net-0", "7net-mf-0:PBE", "7net-l3i5"],
                        help="sevenn model names, name:modal for multi-fidelity models")
    parser.add_argument("--rmd17-dir", type=Path, default=None)
    parser.add_argument("--aspirin-frames", type=int, default=200)
    parser.add_argument("--lee-rotations", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sevenn_results.json"))
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    results = [run_model(spec, args) for spec in args.models]
    text = json.dumps({"threads": args.threads, "results": results}, indent=1, default=float)
    atomic_write(args.out, lambda tmp: tmp.write_text(text))
    table = markdown(results, args.threads)
    atomic_write(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(table + "\n"))
    print(table)


if __name__ == "__main__":
    main()
