"""NVE through ``GAQCalculator``'s defaults and ASE's ``VelocityVerlet`` only, as an ASE user
runs it: the embedded FP32 model against its W4A8 file from ``gaqtool quantize --bits w4a8``.

Per start (rMD17 aspirin test frames, Maxwell-Boltzmann velocities at 300 K, seed 0, zero
momentum and rotation): ``atoms.get_total_energy()`` every step, its drift (slope of a linear
fit, meV/atom/ps), its standard deviation about that fit (meV/atom) and blow-ups. The energy is
whatever the calculator reports, nothing else. Then, in one process and alone on the machine
(``--timing-steps``), the cost of one MD step against one energy + force evaluation of the same
model (median of several blocks).

    python benchmarks/calculator_nve.py --ps 10 --starts 0 1 2 --workers 2
    python benchmarks/calculator_nve.py --timing-only --timing-steps 200   # run alone

Writes benchmarks/results/calculator_nve.json and .md (the table the docs cite).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def quantized_file(directory: Path, threads: int) -> Path:
    """The W4A8 file of the README's main job (the embedded model, default settings)."""
    path = directory / "aspirin_w4a8.safetensors"
    subprocess.run([sys.executable, "-m", "gaqtool", "quantize", "--bits", "w4a8", "-o", str(path),
                    "--threads", str(threads)], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return path


def start_atoms(frame: int, temperature: float, seed: int):
    from gaqtool.data.spec import resolve_data
    from gaqtool.md import initial_state

    frames = resolve_data("rmd17", "test", None, "aspirin").frames
    return initial_state(frames.numbers[frame], frames.positions[frame], temperature, seed)


def summarize(model: str | None, frame: int, times: list, total: list, n: int, blowup, seconds) -> dict:
    from gaqtool.md import energy_drift, energy_scatter

    t, e = np.array(times), np.array(total)
    return {"model": "fp32" if model is None else "w4a8", "frame": frame, "steps": len(t) - 1,
            "ps": float(t[-1]), "drift_mev_atom_ps": energy_drift(t, e, n),
            "std_about_fit_mev_atom": energy_scatter(t, e, n),
            "max_abs_deviation_mev_atom": float(np.abs(e - e[0]).max() * 1000.0 / n),
            "blowup": blowup, "seconds": seconds}


def run_one(model: str | None, frame: int, args: argparse.Namespace) -> dict:
    """Velocity Verlet from one start; E_total from ``atoms.get_total_energy()`` at every step.
    Every ``--checkpoint-steps`` the summary so far goes to ``--partial-dir`` (a long run that is
    stopped still says how far it got)."""
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from gaqtool.ase import GAQCalculator

    torch.set_num_threads(1)
    atoms = start_atoms(frame, args.temperature, args.seed)
    atoms.calc = GAQCalculator(model, threads=1)  # the calculator's defaults otherwise
    steps = int(round(args.ps * 1000.0 / args.dt))
    dyn = VelocityVerlet(atoms, timestep=args.dt * units.fs, logfile=None)
    total, times, blowup = [atoms.get_total_energy()], [0.0], None
    began = time.perf_counter()
    for step in range(1, steps + 1):
        dyn.run(1)
        energy = atoms.get_total_energy()
        spread = np.linalg.norm(atoms.positions - atoms.positions.mean(0), axis=1).max()
        if not np.isfinite(energy) or spread > 10.0:
            blowup = f"step {step}: {'non-finite energy' if not np.isfinite(energy) else 'atom escaped'}"
            break
        total.append(energy)
        times.append(step * args.dt / 1000.0)
        if step % args.checkpoint_steps == 0:
            partial = summarize(model, frame, times, total, len(atoms), blowup, time.perf_counter() - began)
            name = f"{partial['model']}_frame{frame}.json"
            (args.partial_dir / name).write_text(json.dumps(partial))
    return summarize(model, frame, times, total, len(atoms), blowup, time.perf_counter() - began)


def step_cost(model: str | None, steps: int, threads: int, blocks: int = 5) -> dict:
    """Median seconds of one MD step and of one energy + force evaluation (same model, same
    process, interleaved blocks)."""
    import torch
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from gaqtool.ase import GAQCalculator, atoms_to_batch
    from gaqtool.potential import energy_and_forces

    torch.set_num_threads(threads)
    atoms = start_atoms(0, 300.0, 0)
    calc = GAQCalculator(model, threads=threads)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs, logfile=None)
    fp32 = GAQCalculator(None, threads=threads).model  # the reference: one FP32 energy + force evaluation
    batch = atoms_to_batch(atoms, calc.cutoff)
    dyn.run(10)
    for _ in range(5):
        energy_and_forces(fp32, batch)
    md, single = [], []
    for _ in range(blocks):
        began = time.perf_counter()
        dyn.run(steps)
        md.append((time.perf_counter() - began) / steps)
        began = time.perf_counter()
        for _ in range(steps):
            energy_and_forces(fp32, batch)
        single.append((time.perf_counter() - began) / steps)
    return {"md_step_ms": statistics.median(md) * 1e3, "fp32_energy_forces_ms": statistics.median(single) * 1e3}


def table(runs: list[dict], timing: dict | None, threads: int) -> str:
    lines = ["| model | start frame | ps | drift (meV/atom/ps) | std about fit (meV/atom) "
             "| max abs dE (meV/atom) | blow-up |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in sorted(runs, key=lambda r: (r["model"], r["frame"])):
        lines.append(f"| {r['model']} | {r['frame']} | {r['ps']:.2f} | {r['drift_mev_atom_ps']:.3g} "
                     f"| {r['std_about_fit_mev_atom']:.3g} | {r['max_abs_deviation_mev_atom']:.3g} "
                     f"| {r['blowup'] or 'none'} |")
    fp32 = [r for r in runs if r["model"] == "fp32"]
    quant = [r for r in runs if r["model"] == "w4a8"]
    if fp32 and quant:
        def mean_abs(rows, key):
            return float(np.mean([abs(r[key]) for r in rows]))

        lines.append("")
        lines.append(f"Mean |drift|: FP32 {mean_abs(fp32, 'drift_mev_atom_ps'):.3g}, W4A8 "
                     f"{mean_abs(quant, 'drift_mev_atom_ps'):.3g} meV/atom/ps (FP32 range "
                     f"{min(r['drift_mev_atom_ps'] for r in fp32):.3g} .. "
                     f"{max(r['drift_mev_atom_ps'] for r in fp32):.3g}). Mean std about the fit: FP32 "
                     f"{mean_abs(fp32, 'std_about_fit_mev_atom'):.3g}, W4A8 "
                     f"{mean_abs(quant, 'std_about_fit_mev_atom'):.3g} meV/atom.")
    if timing:
        lines.append("")
        lines.append(f"One MD step ({threads} threads, median of 5 blocks): FP32 "
                     f"{timing['fp32']['md_step_ms']:.1f} ms, W4A8 {timing['w4a8']['md_step_ms']:.1f} ms; "
                     f"one FP32 energy + force evaluation {timing['w4a8']['fp32_energy_forces_ms']:.1f} ms.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ps", type=float, default=10.0, help="simulated time per run (ps)")
    parser.add_argument("--dt", type=float, default=0.5, help="time step (fs)")
    parser.add_argument("--temperature", type=float, default=300.0, help="start temperature (K)")
    parser.add_argument("--seed", type=int, default=0, help="velocity seed")
    parser.add_argument("--starts", type=int, nargs="+", default=[0, 1, 2], help="test frames")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel, 1 thread each")
    parser.add_argument("--timing-steps", type=int, default=100, help="steps per timing block")
    parser.add_argument("--timing-threads", type=int, default=2, help="threads for the timing")
    parser.add_argument("--timing-only", action="store_true", help="skip the NVE runs")
    parser.add_argument("--quantized", type=Path, default=None,
                        help="an existing W4A8 file of the embedded model (default: make one)")
    parser.add_argument("--checkpoint-steps", type=int, default=1000, help="steps between partial summaries")
    parser.add_argument("--partial-dir", type=Path, default=Path(tempfile.gettempdir()) / "calculator_nve",
                        help="where partial summaries go")
    parser.add_argument("--out", type=Path, default=RESULTS / "calculator_nve.json")
    args = parser.parse_args()
    from gaqtool.io.atomic import atomic_write

    args.partial_dir.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.quantized or quantized_file(Path(tmp), args.timing_threads)
        runs = previous.get("runs", [])
        if not args.timing_only:
            jobs = [(m, f) for f in args.starts for m in (None, str(path))]
            with ProcessPoolExecutor(args.workers) as pool:
                runs = list(pool.map(run_one, *zip(*jobs), [args] * len(jobs)))
        timing = {"fp32": step_cost(None, args.timing_steps, args.timing_threads),
                  "w4a8": step_cost(str(path), args.timing_steps, args.timing_threads)}
    data = {"command": " ".join(sys.argv), "settings": {k: str(v) for k, v in vars(args).items()},
            "runs": runs, "timing": timing, "timing_threads": args.timing_threads}
    atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))
    markdown = table(runs, timing, args.timing_threads)
    atomic_write(args.out.with_suffix(".md"), lambda tmp: tmp.write_text(markdown))
    print(markdown)


if __name__ == "__main__":
    main()
