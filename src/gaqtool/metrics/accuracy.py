"""Energy and force errors of a model against reference frames (meV, meV/A)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from gaqtool.data.frames import Frames
from gaqtool.data.graph import iterate_batches
from gaqtool.models.potential import energy_and_forces

__all__ = ["Predictions", "predict", "accuracy_metrics"]


@dataclass
class Predictions:
    """energies: (F,) float64 eV; forces: list of (N_i, 3) float64 eV/A."""

    energies: np.ndarray
    forces: list[np.ndarray]


def predict(model: torch.nn.Module, frames: Frames, batch_size: int = 16, cutoff: float | None = None,
            on_batch: Callable[[int], None] | None = None) -> Predictions:
    """Energies and forces (autograd) for every frame; ``on_batch(n)`` after each batch of n."""
    cutoff = float(cutoff if cutoff is not None else model.cutoff)
    energies, forces = [], []
    for batch in iterate_batches(frames, batch_size, cutoff):
        e, f = energy_and_forces(model, batch)
        energies.append(e.detach().double().numpy())
        counts = batch.num_atoms_per_molecule.tolist()
        forces.extend(np.split(f.detach().double().numpy(), np.cumsum(counts)[:-1]))
        if on_batch:
            on_batch(batch.num_molecules)
    return Predictions(np.concatenate(energies), forces)


def accuracy_metrics(pred: Predictions, frames: Frames) -> dict[str, float]:
    """MAE and RMSE of energies (meV) and force components (meV/A), plus per-frame errors."""
    de = (pred.energies - frames.energies) * 1000.0
    df = np.concatenate([(p - r).reshape(-1) for p, r in zip(pred.forces, frames.forces)]) * 1000.0
    return {
        "num_frames": len(frames),
        "energy_mae_mev": float(np.abs(de).mean()),
        "energy_rmse_mev": float(np.sqrt((de**2).mean())),
        "force_mae_mev_a": float(np.abs(df).mean()),
        "force_rmse_mev_a": float(np.sqrt((df**2).mean())),
    }
