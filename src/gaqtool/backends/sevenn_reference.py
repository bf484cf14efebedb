"""sevenn's own FP32 path, for comparisons (``gaqtool bench``): the model of
``sevenn.calculator.SevenNetCalculator`` run on the graph its ``calculate`` builds.

The neighbour list is built once, outside the timed call; the call converts it to sevenn's
``AtomGraphData`` and runs the calculator's model, which computes energy, forces and stress
(sevenn's output module takes all three from one backward pass), exactly as
``SevenNetCalculator.calculate`` does after its neighbour search.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

__all__ = ["sevenn_energy_forces_call"]


def sevenn_energy_forces_call(checkpoint: Path | str, modal: str | None, atoms
                              ) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """A function running sevenn's calculator model once on ``atoms`` (an ase.Atoms):
    ((1,) float64 energy in eV, (n, 3) float32 forces in eV/A); its ``model`` attribute is
    sevenn's model (for its size)."""
    import sevenn._keys as keys
    from sevenn.atom_graph_data import AtomGraphData
    from sevenn.calculator import SevenNetCalculator
    from sevenn.train.dataload import unlabeled_atoms_to_graph

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        calculator = SevenNetCalculator(str(checkpoint), device="cpu", modal=modal)
    graph = unlabeled_atoms_to_graph(atoms, calculator.cutoff, with_shift=False)

    def run():
        data = AtomGraphData.from_numpy_dict(graph)
        if calculator.modal:
            data[keys.DATA_MODALITY] = calculator.modal
        output = calculator.model(data)
        energy = output[keys.PRED_TOTAL_ENERGY].detach().reshape(-1).to(torch.float64)
        return energy, output[keys.PRED_FORCE].detach().float()

    run.model = calculator.model
    return run
