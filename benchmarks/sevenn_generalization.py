"""Do SevenNet-0's quantized files hold on chemistries that calibration never saw?

The universal set that `gaqtool quantize` calibrates on by default has 16 crystal types. This
script builds, by code, 12 strained and rattled crystals of other chemistries (Ni, Au, Mo, Mg,
NiO, KBr, Ge, InP, AlN, CdS, BaO, LiCl: eleven elements absent from the default set) and a
wider calibration file (the 16 default crystals plus 26 crystals of 30 more elements, none of the
held-out set's new ones). Each variant is made with the CLI, exactly as a user would, and
measured against the FP32 parent (teacher mode) on

- the universal test part (the report's "crystals" and "molecules" rows), and
- the held-out chemistries (`gaqtool eval --data heldout.extxyz`).

    python benchmarks/sevenn_generalization.py --threads 2

writes benchmarks/results/sevenn_generalization.{json,md}. Run it alone (about 6 minutes on 2
cores): the QAT row takes most of it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HELD_OUT = [("Ni", "fcc", 3.52, (2, 2, 1)), ("Au", "fcc", 4.08, (2, 2, 1)), ("Mo", "bcc", 3.15, (2, 2, 2)),
            ("Mg", "hcp", 3.21, (2, 2, 2)), ("NiO", "rocksalt", 4.18, (1, 1, 1)),
            ("KBr", "rocksalt", 6.6, (1, 1, 1)), ("Ge", "diamond", 5.66, (1, 1, 1)),
            ("InP", "zincblende", 5.87, (1, 1, 1)), ("AlN", "wurtzite", 3.11, (2, 2, 1)),
            ("CdS", "zincblende", 5.83, (1, 1, 1)), ("BaO", "rocksalt", 5.52, (1, 1, 1)),
            ("LiCl", "rocksalt", 5.13, (1, 1, 1))]
WIDER_CALIBRATION = [
    ("Co", "hcp", 2.51, (2, 2, 2)), ("Pt", "fcc", 3.92, (2, 2, 1)), ("Pd", "fcc", 3.89, (2, 2, 1)),
    ("Ag", "fcc", 4.09, (2, 2, 1)), ("Nb", "bcc", 3.30, (2, 2, 2)), ("Ta", "bcc", 3.30, (2, 2, 2)),
    ("V", "bcc", 3.03, (2, 2, 2)), ("Cr", "bcc", 2.88, (2, 2, 2)), ("Zr", "hcp", 3.23, (2, 2, 2)),
    ("Zn", "hcp", 2.66, (2, 2, 2)), ("Pb", "fcc", 4.95, (2, 2, 1)), ("Ir", "fcc", 3.84, (2, 2, 1)),
    ("FeO", "rocksalt", 4.33, (1, 1, 1)), ("CoO", "rocksalt", 4.26, (1, 1, 1)),
    ("MnO", "rocksalt", 4.44, (1, 1, 1)), ("SrO", "rocksalt", 5.16, (1, 1, 1)),
    ("NaF", "rocksalt", 4.63, (1, 1, 1)), ("RbCl", "rocksalt", 6.58, (1, 1, 1)),
    ("AgCl", "rocksalt", 5.55, (1, 1, 1)), ("CsI", "cesiumchloride", 4.57, (2, 2, 2)),
    ("GaP", "zincblende", 5.45, (1, 1, 1)), ("ZnSe", "zincblende", 5.67, (1, 1, 1)),
    ("InAs", "zincblende", 6.06, (1, 1, 1)), ("BN", "zincblende", 3.62, (1, 1, 1)),
    ("Sn", "diamond", 6.49, (1, 1, 1)), ("C", "diamond", 3.57, (1, 1, 1))]

VARIANTS = [  # (row label, quantize arguments; "{wide}" is the wider calibration file)
    ("W8, defaults", ["--bits", "w8"]),
    ("W4, defaults", ["--bits", "w4"]),
    ("W4, nearest rounding", ["--bits", "w4", "--weight-rounding", "nearest"]),
    ("W4, wider calibration (42 crystals, no molecules)",
     ["--bits", "w4", "--calib-data", "{wide}", "--calib-frames", "42"]),
    ("W4, QAT 20 epochs on the default set (teacher, lr 1e-3)",
     ["--bits", "w4", "--qat-epochs", "20", "--weight-clip", "mse", "--qat-lr", "1e-3",
      "--vector-warmup", "0", "--qat-batch-size", "4"]),
]


def strained_rattled(specs, seed: int) -> list:
    """The universal set's recipe (gaqtool.data.universal): strain <= 3%, rattle 0.03-0.12 A."""
    from ase.build import bulk

    from gaqtool.data.universal import MAX_STRAIN, RATTLE

    rng = np.random.default_rng(seed)
    structures = []
    for name, kind, a, repeats in specs:
        arguments = dict(name=name, crystalstructure=kind, a=a)
        if kind in ("hcp", "wurtzite"):
            arguments["c"] = a * (1.624 if kind == "hcp" else 1.6)
        if kind in ("fcc", "bcc", "rocksalt", "diamond", "zincblende"):
            arguments["cubic"] = True
        atoms = bulk(**arguments) * repeats
        strain = rng.uniform(-MAX_STRAIN, MAX_STRAIN, (3, 3))
        atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(scale=rng.uniform(*RATTLE), size=atoms.positions.shape)
        structures.append(atoms)
    return structures


def default_crystals() -> list:
    from ase import Atoms

    from gaqtool.data.universal import universal_frames

    frames = universal_frames("calib", molecules=False)
    return [Atoms(numbers=frames.numbers[k], positions=frames.positions[k], cell=frames.cells[k], pbc=True)
            for k in range(len(frames.numbers))]


def gaqtool(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "gaqtool", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"gaqtool {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sevenn:7net-0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sevenn_generalization"))
    args = parser.parse_args()
    from ase.io import write

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        held_out, wide = tmp / "heldout.extxyz", tmp / "wide.extxyz"
        write(held_out, strained_rattled(HELD_OUT, seed=777))
        write(wide, default_crystals() + strained_rattled(WIDER_CALIBRATION, seed=4242))
        for label, arguments in VARIANTS:
            extra = [str(wide) if a == "{wide}" else a for a in arguments]
            out, report = tmp / "q.safetensors", tmp / "report.json"
            gaqtool("quantize", args.model, "-o", str(out), "--report", str(report),
                    "--threads", str(args.threads), *extra)
            deviation = json.loads(report.read_text())["deviation"]
            held = json.loads(gaqtool("eval", str(out), "--data", str(held_out), "--threads",
                                      str(args.threads), "--json"))["data"]["teacher"]["metrics"]
            rows.append({"variant": label, "arguments": arguments,
                         "test_crystals_force_mev_a": deviation["crystals"]["force_mae_mev_a"],
                         "test_crystals_energy_mev_atom": deviation["crystals"]["energy_mae_mev_per_atom"],
                         "test_aspirin_force_mev_a": deviation["molecules"]["force_mae_mev_a"],
                         "held_out_force_mev_a": held["force_mae_mev_a"],
                         "held_out_energy_mev_atom": held["energy_mae_mev_per_atom"]})
            print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"model": args.model, "threads": args.threads,
                                                         "rows": rows}, indent=2))
    lines = [f"`python benchmarks/sevenn_generalization.py --threads {args.threads}` ({args.model}; "
             "mean |dF| in meV/A, |dE| in meV/atom, against the FP32 parent)", "",
             "| variant | test crystals dF | dE | test aspirin dF | held-out crystals dF | dE |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['test_crystals_force_mev_a']:.1f} | "
                     f"{r['test_crystals_energy_mev_atom']:.1f} | {r['test_aspirin_force_mev_a']:.1f} | "
                     f"{r['held_out_force_mev_a']:.1f} | {r['held_out_energy_mev_atom']:.1f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
