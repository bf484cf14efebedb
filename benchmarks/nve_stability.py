"""NVE energy conservation of the embedded model and its quantized versions, same start.

Velocity Verlet (ASE) from rMD17 aspirin test frame 0 with seeded Maxwell-Boltzmann
velocities; total-energy drift from a linear fit (meV/atom/ps), max |dE|, blow-up check.

    python benchmarks/nve_stability.py --rmd17-dir ../shared/data/rmd17 --ps 10

For force mode 'conservative' the dynamics integrate and report E_s (activation rounding off); the
activation-quantized E_q is tracked as a diagnostic and its drift printed beside (E_q drift).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from gaqtool.ase import GAQCalculator
from gaqtool.config import QuantConfig
from gaqtool.data.spec import resolve_data
from gaqtool.io.atomic import atomic_write
from gaqtool.io.checkpoint import default_model_path
from gaqtool.io.loading import load_model
from gaqtool.md import MDSettings, initial_state, run_nve
from gaqtool.workflow import quantize_loaded

VARIANTS = {
    "weight-only w4": dict(bits="w4", method="weight-only"),
    "gaq w4a8 frame (ste forces)": dict(bits="w4a8", method="gaq", direction_mode="frame"),
    "gaq w4a8 frame (conservative forces)": dict(bits="w4a8", method="gaq", direction_mode="frame",
                                                 force_mode="conservative"),
    "gaq w4a8 component (ste forces)": dict(bits="w4a8", method="gaq", direction_mode="component"),
    "naive w4a8 (ste forces)": dict(bits="w4a8", method="naive"),
}


def run_variant(name: str, seed: int, args: argparse.Namespace, settings: MDSettings) -> dict:
    """Build one variant (FP32 or a quantized copy) and run NVE from the start of ``seed``
    (Maxwell-Boltzmann velocities; the same for every variant) in one process."""
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    start_frames = resolve_data("rmd17", "test", args.rmd17_dir, loaded.molecule).frames
    start = initial_state(start_frames.numbers[0], start_frames.positions[0], args.temperature, seed=seed)
    model = loaded.model
    if name != "fp32":
        spec = VARIANTS[name]
        calib = resolve_data("rmd17", "train", args.rmd17_dir, loaded.molecule)
        config = QuantConfig.from_preset(spec["bits"], **{k: v for k, v in spec.items() if k != "bits"})
        model = quantize_loaded(loaded.model, config, calib.frames)[0]
    began = time.perf_counter()
    result = run_nve(start, GAQCalculator(model, force_mode=None, quantized_energy=True, threads=args.threads), settings)  # each variant its own mode
    s = {**result.summary(), "seconds": time.perf_counter() - began, "series": result.series()}
    print(f"{name} (seed {seed}): drift {s['drift_mev_atom_ps']:.4g} meV/atom/ps (E_q: "
          f"{s['quantized_energy_drift_mev_atom_ps']:.4g}), max |dE| {s['max_abs_energy_deviation_mev_atom']:.4g} "
          f"meV/atom, {s['simulated_ps']:.2f} ps in {s['seconds']:.0f} s, blew up: {s['blowup_reason']}",
          flush=True)
    return {**s, "seed": seed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--rmd17-dir", type=Path, default=None)
    parser.add_argument("--ps", type=float, default=10.0, help="simulated time per model (ps)")
    parser.add_argument("--dt", type=float, default=0.5, help="time step (fs)")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one process each)")
    parser.add_argument("--only", nargs="*", default=None, help="subset of variant names (plus fp32)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0],
                        help="velocity seeds; every variant runs from each (mean |drift| is compared)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/nve_stability.json"))
    parser.add_argument("--reuse-fp32", type=Path, default=None,
                        help="Take the FP32 runs of these seeds from an earlier output with the same settings "
                             "(the embedded FP32 model and its start are unchanged, so they are the same "
                             "trajectories) instead of integrating them again.")
    args = parser.parse_args()
    settings = MDSettings(temperature_k=args.temperature, timestep_fs=args.dt,
                          steps=int(round(args.ps * 1000 / args.dt)), log_every=20, seed=0)
    names = ["fp32"] + [n for n in VARIANTS if args.only is None or n in args.only]
    runs = [(name, seed) for seed in args.seeds for name in names]
    key = (lambda name, seed: name) if len(args.seeds) == 1 else (lambda name, seed: f"{name} seed {seed}")
    done: dict[str, dict] = {}
    if args.reuse_fp32:
        earlier = json.loads(args.reuse_fp32.read_text())
        same = {k: v for k, v in earlier["settings"].items() if k != "seeds"} == settings.__dict__
        if not same:
            raise SystemExit(f"--reuse-fp32: {args.reuse_fp32} was run with other settings")
        earlier_key = (lambda seed: "fp32") if len(earlier["settings"]["seeds"]) == 1 else (
            lambda seed: f"fp32 seed {seed}")
        for seed in args.seeds:
            if seed in earlier["settings"]["seeds"]:
                done[key("fp32", seed)] = earlier["results"][earlier_key(seed)] | {"reused_from": str(args.reuse_fp32)}
        runs_to_do = [run for run in runs if key(*run) not in done]
    else:
        runs_to_do = runs

    def save() -> None:  # after every finished run, so a long job killed late keeps what it has
        ordered = {key(*run): done[key(*run)] for run in runs if key(*run) in done}
        text = json.dumps({"settings": settings.__dict__ | {"seeds": args.seeds}, "results": ordered}, indent=2)
        atomic_write(args.out, lambda tmp: tmp.write_text(text))

    with ProcessPoolExecutor(max_workers=args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_variant, name, seed, args, settings): (name, seed) for name, seed in runs_to_do}
        for future in as_completed(futures):
            done[key(*futures[future])] = future.result()
            save()
    results = {key(*run): done[key(*run)] for run in runs}
    fp32 = {seed: results[key("fp32", seed)] for seed in args.seeds}
    print("\n| model | seed | drift (meV/atom/ps) | abs drift / FP32 | E_q drift | abs / FP32 "
          "| max abs dE (meV/atom) | max change of E_q - E_s | simulated (ps) | blow-up |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, seed in runs:
        s, f = results[key(name, seed)], fp32[seed]
        print(f"| {name} | {seed} | {s['drift_mev_atom_ps']:.3g} "
              f"| {abs(s['drift_mev_atom_ps']) / abs(f['drift_mev_atom_ps']):.1f} "
              f"| {s['quantized_energy_drift_mev_atom_ps']:.3g} "
              f"| {abs(s['quantized_energy_drift_mev_atom_ps']) / abs(f['quantized_energy_drift_mev_atom_ps']):.1f} "
              f"| {s['max_abs_energy_deviation_mev_atom']:.3g} | {s['max_abs_gap_change_mev_atom']:.3g} "
              f"| {s['simulated_ps']:.2f} | {s['blowup_reason'] or 'no'} |")
    if len(args.seeds) > 1:
        def mean_abs_of(field: str) -> dict[str, float]:
            return {name: sum(abs(results[key(name, seed)][field]) for seed in args.seeds) / len(args.seeds)
                    for name in names}

        mean_abs, mean_abs_reported = mean_abs_of("drift_mev_atom_ps"), mean_abs_of("quantized_energy_drift_mev_atom_ps")
        print(f"\n| model | mean abs drift over {len(args.seeds)} seeds | / FP32 | mean abs E_q drift | / FP32 |")
        print("|---|---:|---:|---:|---:|")
        for name in names:
            print(f"| {name} | {mean_abs[name]:.3g} | {mean_abs[name] / mean_abs['fp32']:.2f} "
                  f"| {mean_abs_reported[name]:.3g} | {mean_abs_reported[name] / mean_abs_reported['fp32']:.2f} |")
    print(f"\n{settings.steps} steps of {args.dt} fs from {args.temperature:.0f} K, rMD17 aspirin test frame 0, "
          f"{args.threads} thread(s) per run, {args.jobs} runs in parallel. drift: linear fit of E_pot + E_kin "
          "with E_pot the potential whose gradient the forces are (E_s for conservative forces); "
          "E_q drift: the same with the activation-quantized energy E_q.")


if __name__ == "__main__":
    main()
