"""Float32 force error of SevenNet-0 three ways, against a float64 copy of the same model:
sevenn's own calculator model, gaqtool with the fused convolution, gaqtool with e3nn's.

Systems as in `gaqtool bench` (1 aspirin, 32 aspirins 20 A apart, Si 216). Prints max |dF|
(eV/A) of each against float64 and between gaqtool and sevenn.

    python benchmarks/sevenn_float32_error.py --threads 2
"""

from __future__ import annotations

import argparse
import warnings
from dataclasses import replace

import torch

from gaqtool.backends.sevenn_reference import sevenn_energy_forces_call
from gaqtool.cli.bench import universal_systems
from gaqtool.data.frames import read_npz
from gaqtool.data.spec import sample_path
from gaqtool.io.loading import load_model
from gaqtool.potential import energy_and_forces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    fused = load_model("sevenn:7net-0")
    e3nn = load_model("sevenn:7net-0", e3nn_convolution=True).model
    float64 = load_model("sevenn:7net-0").model.double()
    for name, batch, _, atoms in universal_systems(read_npz(sample_path("test")), fused.model.cutoff, 32):
        forces = {"sevenn": sevenn_energy_forces_call(fused.path, None, atoms)()[1],
                  "fused": energy_and_forces(fused.model, batch)[1],
                  "e3nn": energy_and_forces(e3nn, batch)[1]}
        exact = energy_and_forces(float64, replace(batch, positions=batch.positions.double()))[1].float()
        print(f"{name} ({len(batch.numbers)} atoms), max |F| {float(exact.abs().max()):.2f} eV/A")
        for kind, f in forces.items():
            print(f"  {kind:7s} vs float64: max |dF| {float((f - exact).abs().max()):.2e} eV/A")
        for kind in ("fused", "e3nn"):
            print(f"  {kind:7s} vs sevenn:  max |dF| {float((forces[kind] - forces['sevenn']).abs().max()):.2e} eV/A")


if __name__ == "__main__":
    main()
