"""NVE energy conservation of the embedded model and its quantized versions, same start.

Velocity Verlet (ASE) from rMD17 aspirin test frame 0 with seeded Maxwell-Boltzmann
velocities; total-energy drift from a linear fit (meV/atom/ps), max |dE|, blow-up check.

    python benchmarks/nve_stability.py --rmd17-dir ../shared/data/rmd17 --ps 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gaqtool.ase import GAQCalculator
from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.checkpoint import default_model_path
from gaqtool.io.loading import load_model
from gaqtool.md import MDSettings, initial_state, run_nve
from gaqtool.workflow import quantize_loaded

VARIANTS = {
    "weight-only w4": dict(bits="w4", method="weight-only"),
    "gaq w4a8 (ste forces)": dict(bits="w4a8", method="gaq"),
    "gaq w4a8 (conservative forces)": dict(bits="w4a8", method="gaq", force_mode="conservative"),
    "naive w4a8 (ste forces)": dict(bits="w4a8", method="naive"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--rmd17-dir", type=Path, default=None)
    parser.add_argument("--ps", type=float, default=10.0, help="simulated time per model (ps)")
    parser.add_argument("--dt", type=float, default=0.5, help="time step (fs)")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="*", default=None, help="subset of variant names (plus fp32)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/nve_stability.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    calib = resolve_data("rmd17", "train", args.rmd17_dir, loaded.molecule)
    start_frames = resolve_data("rmd17", "test", args.rmd17_dir, loaded.molecule).frames
    settings = MDSettings(temperature_k=args.temperature, timestep_fs=args.dt,
                          steps=int(round(args.ps * 1000 / args.dt)), log_every=20, seed=0)
    start = initial_state(start_frames.numbers[0], start_frames.positions[0], args.temperature, seed=0)
    models = {"fp32": loaded.model}
    for name, spec in VARIANTS.items():
        if args.only is None or name in args.only:
            config = QuantConfig.from_preset(spec["bits"], method=spec["method"],
                                             force_mode=spec.get("force_mode", "ste"))
            models[name] = quantize_loaded(loaded.model, config, calib.frames)[0]
    results = {}
    for name, model in models.items():
        result = run_nve(start, GAQCalculator(model), settings)
        results[name] = {**result.summary(), "series": result.series()}
        s = results[name]
        print(f"{name}: drift {s['drift_mev_atom_ps']:.4g} meV/atom/ps, max |dE| "
              f"{s['max_abs_energy_deviation_mev_atom']:.4g} meV/atom, {s['simulated_ps']:.2f} ps, "
              f"blew up: {s['blowup_reason']}", flush=True)
    fp32_drift = abs(results["fp32"]["drift_mev_atom_ps"])
    print("\n| model | drift (meV/atom/ps) | |drift| / FP32 | max abs dE (meV/atom) | simulated (ps) | blow-up |")
    print("|---|---:|---:|---:|---:|---|")
    for name, s in results.items():
        print(f"| {name} | {s['drift_mev_atom_ps']:.3g} | {abs(s['drift_mev_atom_ps']) / fp32_drift:.1f} "
              f"| {s['max_abs_energy_deviation_mev_atom']:.3g} | {s['simulated_ps']:.2f} | {s['blowup_reason'] or 'no'} |")
    print(f"\n{settings.steps} steps of {args.dt} fs from {args.temperature:.0f} K, rMD17 aspirin test frame 0, "
          f"{args.threads} threads")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": settings.__dict__, "results": results}, indent=2))


if __name__ == "__main__":
    main()
