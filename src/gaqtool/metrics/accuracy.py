"""Energy, force and stress errors of a model: against reference labels, and against another
model's predictions on the same frames (a quantized model against its FP32 parent).

Units: energies meV and meV/atom, forces meV/A (per component), stress meV/A^3. A universal
model's energies sit on another reference than, e.g., rMD17's DFT totals; the mean signed error
per atom (``energy_offset_mev_per_atom``) and the MAE after removing it are reported beside
the plain MAE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from gaqtool.data.frames import Frames
from gaqtool.data.graph import iterate_batches
from gaqtool.potential import predict_batch

__all__ = ["Predictions", "predict", "accuracy_metrics", "deviation_metrics"]


@dataclass
class Predictions:
    """energies: (F,) float64 eV; forces: list of (N_i, 3) float64 eV/A; stresses: list of
    (3, 3) float64 eV/A^3 (NaN for frames without a cell), or None when not computed."""

    energies: np.ndarray
    forces: list[np.ndarray]
    stresses: list[np.ndarray] | None = None


def predict(model: torch.nn.Module, frames: Frames, batch_size: int = 16, cutoff: float | None = None,
            on_batch: Callable[[int], None] | None = None, stress: bool | None = None) -> Predictions:
    """Energies, forces and (for periodic frames, or when ``stress``) stress of every frame, by
    autograd; ``on_batch(n)`` after each batch of n frames."""
    cutoff = float(cutoff if cutoff is not None else model.cutoff)
    stress = frames.any_periodic if stress is None else stress
    energies, forces, stresses = [], [], []
    offset = 0
    for batch in iterate_batches(frames, batch_size, cutoff):
        prediction = predict_batch(model, batch, stress=stress)
        energies.append(prediction.energies.detach().double().cpu().numpy())
        counts = batch.num_atoms_per_molecule.tolist()
        forces.extend(np.split(prediction.forces.detach().double().cpu().numpy(), np.cumsum(counts)[:-1]))
        if stress:
            for k, s in enumerate(prediction.stress.detach().double().cpu().numpy()):
                stresses.append(s if np.any(frames.periodic(offset + k)) else np.full((3, 3), np.nan))
        offset += batch.num_molecules
        if on_batch:
            on_batch(batch.num_molecules)
    return Predictions(np.concatenate(energies), forces, stresses if stress else None)


def _errors(pred: Predictions, energies: np.ndarray, forces: list[np.ndarray],
            stresses: list[np.ndarray] | None, frames: Frames, keep: np.ndarray) -> dict[str, float]:
    """Error statistics of ``pred`` against the given values on the frames where ``keep``."""
    idx = np.nonzero(keep)[0]
    natoms = frames.num_atoms[idx].astype(float)
    de = (pred.energies[idx] - energies[idx]) * 1000.0
    df = np.concatenate([(pred.forces[i] - forces[i]).reshape(-1) for i in idx]) * 1000.0
    offset = float((de / natoms).mean())  # mean signed error per atom: a reference mismatch
    out = {
        "energy_mae_mev": float(np.abs(de).mean()),
        "energy_rmse_mev": float(np.sqrt((de ** 2).mean())),
        "energy_mae_mev_per_atom": float(np.abs(de / natoms).mean()),
        "energy_offset_mev_per_atom": offset,
        "energy_mae_mev_offset_removed": float(np.abs(de - offset * natoms).mean()),
        "force_mae_mev_a": float(np.abs(df).mean()),
        "force_rmse_mev_a": float(np.sqrt((df ** 2).mean())),
        "force_max_mev_a": float(np.abs(df).max()),
    }
    if stresses is not None and pred.stresses is not None:
        rows = [i for i in idx if np.all(np.isfinite(stresses[i])) and np.all(np.isfinite(pred.stresses[i]))]
        if rows:
            ds = np.concatenate([(pred.stresses[i] - stresses[i]).reshape(-1) for i in rows]) * 1000.0
            out["stress_mae_mev_a3"] = float(np.abs(ds).mean())
            out["stress_frames"] = len(rows)
    return out


def _groups(frames: Frames) -> dict[str, np.ndarray]:
    """'crystals' (periodic) and 'molecules' masks, when the frames hold both kinds."""
    periodic = np.array([bool(np.any(frames.periodic(i))) for i in range(len(frames))])
    if periodic.all() or not periodic.any():
        return {}
    return {"crystals": periodic, "molecules": ~periodic}


def accuracy_metrics(pred: Predictions, frames: Frames) -> dict:
    """Errors against the frames' labels, over the labelled frames only (``num_labelled``);
    per-kind breakdown ('crystals', 'molecules') for mixed sets. Stress where labelled."""
    labelled = np.array([np.isfinite(e) and np.all(np.isfinite(f))
                         for e, f in zip(frames.energies, frames.forces)])
    out: dict = {"num_frames": len(frames), "num_labelled": int(labelled.sum())}
    if not labelled.any():
        return out
    out.update(_errors(pred, frames.energies, frames.forces, frames.stresses, frames, labelled))
    for name, mask in _groups(frames).items():
        if (mask & labelled).any():
            out[name] = {"num_frames": int((mask & labelled).sum()),
                         **_errors(pred, frames.energies, frames.forces, frames.stresses, frames,
                                   mask & labelled)}
    return out


def deviation_metrics(pred: Predictions, reference: Predictions, frames: Frames) -> dict:
    """How far ``pred`` is from ``reference`` (e.g. a quantized model from its FP32 parent) on
    every frame: the same statistics as ``accuracy_metrics``, with a per-kind breakdown."""
    every = np.ones(len(frames), dtype=bool)
    out: dict = {"num_frames": len(frames),
                 **_errors(pred, reference.energies, reference.forces, reference.stresses, frames, every)}
    for name, mask in _groups(frames).items():
        out[name] = {"num_frames": int(mask.sum()),
                     **_errors(pred, reference.energies, reference.forces, reference.stresses, frames, mask)}
    return out
