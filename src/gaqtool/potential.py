"""What every model backend's potential is, and energies, forces and stress by autograd.

A potential is an ``nn.Module`` with

- ``forward(batch) -> (M,)`` float64 total energies in eV, differentiable with respect to
  ``batch.positions`` and ``batch.cell`` (edge vectors come from ``batch.edge_vectors()``);
- ``cutoff`` (Angstrom), ``species`` (atomic numbers it knows) and ``config`` (a JSON-able dict
  whose ``"architecture"`` names its backend, enough to rebuild it without pickle);
- ``add_energy_offset(ev_per_atom)``: shift every atomic energy (and its config) by a constant;
- ``module_roles() -> {module path: role}`` for the roles in :data:`ROLES`.

Forces and stress are derivatives of that energy, computed here once for every backend:
forces = -dE/dx; stress = (1/V) dE/d(strain) under a symmetric strain of positions and cell
(ASE's sign convention: positive under tension).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from gaqtool.data.graph import Batch
from gaqtool.errors import UnknownElementError

__all__ = ["ROLES", "Prediction", "predict_batch", "autograd_prediction", "energy_and_forces",
           "check_species"]

ROLES = ("species_embedding", "readout", "radial")
"""Module roles a backend may declare: the layer that turns species into the first features,
the layers after the last interaction that map features to atomic energies, and the per-edge
networks of the edge length whose outputs weight the tensor products."""


@dataclass
class Prediction:
    """energies (M,) float64 eV; forces (n, 3) eV/A; stress (M, 3, 3) eV/A^3 or None."""

    energies: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor | None = None


def autograd_prediction(model: torch.nn.Module, batch: Batch, stress: bool = False,
                        create_graph: bool = False) -> Prediction:
    """Energies of ``model`` on ``batch`` and their derivatives: forces, and stress when asked
    (structures without a cell get zeros). ``create_graph`` keeps the graph (training)."""
    positions = batch.positions.detach().requires_grad_(True)
    inputs = [positions]
    strained = replace(batch, positions=positions)
    if stress and batch.cell is not None:
        strain = torch.zeros(batch.num_molecules, 3, 3, dtype=positions.dtype,
                             device=positions.device, requires_grad=True)
        symmetric = 0.5 * (strain + strain.transpose(1, 2))
        per_atom = symmetric.index_select(0, batch.molecule_index)
        strained = replace(batch, positions=positions + torch.einsum("ni,nij->nj", positions, per_atom),
                           cell=batch.cell + torch.bmm(batch.cell.to(positions.dtype), symmetric))
        inputs.append(strain)
    energies = model(strained)
    grads = torch.autograd.grad(energies.sum(), inputs, create_graph=create_graph, allow_unused=True)
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
    stress_out = None
    if stress:
        stress_out = torch.zeros(batch.num_molecules, 3, 3, dtype=torch.float64, device=positions.device)
        if len(grads) > 1 and grads[1] is not None:
            volume = batch.volumes().to(positions.device)
            has_cell = volume > 1e-9
            stress_out[has_cell] = grads[1].double()[has_cell] / volume[has_cell, None, None]
    return Prediction(energies, forces, stress_out)


def predict_batch(model: torch.nn.Module, batch: Batch, stress: bool = False,
                  create_graph: bool = False) -> Prediction:
    """Energies, forces (and stress) of ``model`` on ``batch``.

    A model may bring its own rule (``model.compute_prediction(batch, stress, create_graph)``),
    e.g. a quantized model whose forces come from a different pass than its energy.
    """
    custom = getattr(model, "compute_prediction", None)
    if custom is not None:
        return custom(batch, stress, create_graph)
    return autograd_prediction(model, batch, stress, create_graph)


def energy_and_forces(model: torch.nn.Module, batch: Batch, create_graph: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(M,) float64 energies in eV and (n, 3) forces -dE/dx in eV/A (``predict_batch``)."""
    prediction = predict_batch(model, batch, create_graph=create_graph)
    return prediction.energies, prediction.forces


def check_species(numbers, species: list[int], model_name: str = "the model", where: str = "") -> None:
    """Raise ``UnknownElementError`` (a ValueError) naming the elements of ``numbers`` (tensor or
    array of atomic numbers) outside ``species``; ``where`` (e.g. 'frame 3 of x.xyz') is
    appended to the message."""
    from ase.data import chemical_symbols

    known = sorted(int(z) for z in species)
    values = numbers.detach().cpu().numpy() if isinstance(numbers, torch.Tensor) else np.asarray(numbers)
    unknown = sorted({int(z) for z in np.unique(values)} - set(known))
    if not unknown:
        return

    def symbol(z: int) -> str:
        return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"

    names = ", ".join(f"{symbol(z)} (Z={z})" if 0 < z < len(chemical_symbols) else f"Z={z}" for z in unknown)
    allowed = (", ".join(symbol(z) for z in known) if len(known) <= 12 else
               f"{len(known)} elements, {symbol(known[0])} to {symbol(known[-1])}")
    raise UnknownElementError(f"{model_name} has no parameters for element(s) {names}"
                              + (f" ({where})" if where else ""),
                              hint=f"use structures of the elements the model knows ({allowed})")
