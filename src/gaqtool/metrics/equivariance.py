"""Local equivariance error (LEE) from finite Haar-random rotations.

For frames x and rotations R: force error |F(Rx) - R F(x)| per atom (meV/A) and energy error
|E(Rx) - E(x)| (meV). Rounding has zero derivative, so the Lie-derivative LEE cannot see
quantization errors; finite rotations can. Rotations come from a seeded generator, so the
same seed gives the same rotation set for every model (FP32 floor and quantized side by side).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from gaqtool.data.frames import Frames
from gaqtool.metrics.accuracy import predict

__all__ = ["haar_rotations", "rotate_frames", "local_equivariance_error"]


def haar_rotations(count: int, seed: int) -> np.ndarray:
    """(count, 3, 3) float64 Haar-random rotation matrices (unit quaternions from a Gaussian)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(count, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], 1)


def rotate_frames(frames: Frames, rotation: np.ndarray) -> Frames:
    """Frames with positions, cells (lattice vectors as rows) and reference forces and stress
    rotated about each frame's centroid."""
    positions = [(p - p.mean(0)) @ rotation.T + p.mean(0) for p in frames.positions]
    forces = [f @ rotation.T for f in frames.forces]
    cells = None if frames.cells is None else [c @ rotation.T for c in frames.cells]
    stresses = None if frames.stresses is None else [rotation @ s @ rotation.T for s in frames.stresses]
    return Frames(frames.numbers, positions, frames.energies.copy(), forces, frames.source,
                  frames.molecule, dict(frames.info), cells=cells, pbc=frames.pbc, stresses=stresses)


def local_equivariance_error(model: torch.nn.Module, frames: Frames, num_rotations: int = 4,
                             seed: int = 0, batch_size: int = 16,
                             on_progress: Callable[[int], None] | None = None) -> dict[str, float]:
    """LEE of ``model`` over all ``frames`` x ``num_rotations`` rotations.

    Returns force_mean/max_mev_a (per-atom vector error), energy_mean/max_mev, and
    force_relative (mean error / mean |F|), plus the counts and the seed.
    """
    base = predict(model, frames, batch_size, stress=False)
    force_errors, energy_errors = [], []
    for rotation in haar_rotations(num_rotations, seed):
        rotated = predict(model, rotate_frames(frames, rotation), batch_size, stress=False)
        energy_errors.append(np.abs(rotated.energies - base.energies) * 1000.0)
        for f0, f1 in zip(base.forces, rotated.forces):
            force_errors.append(np.linalg.norm(f1 - f0 @ rotation.T, axis=1) * 1000.0)
        if on_progress:
            on_progress(1)
    force_errors_arr = np.concatenate(force_errors)
    energy_errors_arr = np.concatenate(energy_errors)
    mean_force = float(np.mean([np.linalg.norm(f, axis=1).mean() for f in base.forces]) * 1000.0)
    return {
        "num_frames": len(frames), "num_rotations": num_rotations, "seed": seed,
        "force_mean_mev_a": float(force_errors_arr.mean()),
        "force_max_mev_a": float(force_errors_arr.max()),
        "energy_mean_mev": float(energy_errors_arr.mean()),
        "energy_max_mev": float(energy_errors_arr.max()),
        "mean_force_norm_mev_a": mean_force,
        "force_relative": float(force_errors_arr.mean() / max(mean_force, 1e-12)),
    }
