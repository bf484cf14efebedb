"""NVE of a periodic crystal with a SevenNet model (FP32 or a quantized file), through
``gaqtool.ase.GAQCalculator`` and ASE's VelocityVerlet only.

A 64-atom Si diamond cell (2x2x2 of the 8-atom cubic cell, a = 5.43 A), Maxwell-Boltzmann
velocities at --temperature (seeded, zero total momentum), fixed cell, --dt fs. Logs the total
energy every --log-every steps; the drift is the slope of a linear fit (meV/atom/ps), the
fluctuation the standard deviation about it (meV/atom). "Blow-up": a non-finite energy or an
atom moving more than 2 A from its start in one log interval.

    python benchmarks/sevenn_nve.py sevenn:7net-0 --steps 1000 --out nve_fp32.json
    python benchmarks/sevenn_nve.py w4.safetensors --steps 1000 --out nve_w4.json
    python benchmarks/sevenn_nve.py w8.safetensors --int8 --steps 1000 --out nve_w8_int8.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="sevenn:<name> or a quantized .safetensors file")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--dt", type=float, default=1.0, help="fs")
    parser.add_argument("--temperature", type=float, default=600.0, help="K")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--int8", action="store_true",
                        help="int8 GEMMs in the radial networks, forward and backward (a quantized "
                             "file; forces straight through the rounding, not conservative)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)

    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    from gaqtool.ase import GAQCalculator
    from gaqtool.io.atomic import atomic_write

    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    Stationary(atoms)
    atoms.calc = GAQCalculator(args.model, threads=args.threads)
    if args.int8:
        from gaqtool.kernels.int8 import enable_integer_kernels

        switched = enable_integer_kernels(atoms.calc.model, require_speedup=False).switched
        print(f"int8 kernels in {len(switched)} layers", flush=True)
    dynamics = VelocityVerlet(atoms, timestep=args.dt * units.fs)
    times, energies, blown = [], [], False
    last = atoms.positions.copy()
    started = time.perf_counter()
    for step in range(0, args.steps + 1, args.log_every):
        if step:
            dynamics.run(args.log_every)
        energy = atoms.get_potential_energy() + atoms.get_kinetic_energy()
        moved = np.linalg.norm(atoms.positions - last, axis=1).max()
        last = atoms.positions.copy()
        times.append(step * args.dt / 1000.0)
        energies.append(energy)
        if not np.isfinite(energy) or moved > 2.0:
            blown = True
            break
        if step % (10 * args.log_every) == 0:
            print(f"step {step}: E_tot {energy:.5f} eV, T {atoms.get_temperature():.0f} K, "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    t, e = np.array(times), np.array(energies) / len(atoms) * 1000.0  # ps, meV/atom
    slope, intercept = np.polyfit(t, e, 1) if len(t) > 2 else (np.nan, np.nan)
    result = {"model": args.model, "int8_kernels": args.int8, "atoms": len(atoms), "temperature_K": args.temperature,
              "dt_fs": args.dt, "steps_done": int(round(t[-1] * 1000 / args.dt)), "blow_up": blown,
              "drift_mev_per_atom_per_ps": float(slope),
              "fluctuation_mev_per_atom": float(np.std(e - (slope * t + intercept))),
              "max_deviation_mev_per_atom": float(np.abs(e - e[0]).max()),
              "seconds": time.perf_counter() - started, "threads": args.threads,
              "times_ps": t.tolist(), "total_energy_mev_per_atom": e.tolist()}
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=1)))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=1))


if __name__ == "__main__":
    main()
