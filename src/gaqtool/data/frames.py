"""In-memory labelled molecular frames and their readers (rMD17 npz, sGDML npz, any ASE file).

All arrays use eV and Angstrom. Frames may differ in composition (ASE files), so per-frame
arrays are kept in lists; rMD17 files give frames of one molecule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gaqtool.errors import DataError

__all__ = ["Frames", "KCAL_MOL_TO_EV", "read_npz", "read_ase", "read_frames"]

KCAL_MOL_TO_EV = 0.0433641
"""1 kcal/mol in eV (the constant nequip's rMD17 loader uses)."""


@dataclass
class Frames:
    """Labelled frames.

    numbers:   list of (N_i,) int64 atomic numbers
    positions: list of (N_i, 3) float64, Angstrom
    energies:  (F,) float64 total energies, eV (NaN if unlabelled)
    forces:    list of (N_i, 3) float64, eV/Angstrom
    source:    human-readable origin, shown in reports
    """

    numbers: list[np.ndarray]
    positions: list[np.ndarray]
    energies: np.ndarray
    forces: list[np.ndarray]
    source: str = ""
    molecule: str | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numbers)

    def subset(self, indices) -> "Frames":
        """Frames at ``indices`` (any int sequence), same order."""
        idx = [int(i) for i in indices]
        if not idx:
            raise DataError(f"empty frame selection from {self.source}",
                            hint="choose a non-empty range of frames")
        return Frames(
            numbers=[self.numbers[i] for i in idx],
            positions=[self.positions[i] for i in idx],
            energies=self.energies[idx],
            forces=[self.forces[i] for i in idx],
            source=self.source,
            molecule=self.molecule,
            info=dict(self.info),
        )

    @property
    def num_atoms(self) -> np.ndarray:
        """(F,) atoms per frame."""
        return np.array([len(z) for z in self.numbers])


def _validated(numbers, coords, energies, forces, source: str) -> None:
    """Raise DataError on shape mismatches or non-finite values."""
    if coords.ndim != 3 or coords.shape[2] != 3:
        raise DataError(f"{source}: coordinates have shape {coords.shape}, expected (frames, atoms, 3)")
    nframes, natoms = coords.shape[:2]
    if numbers.shape != (natoms,):
        raise DataError(f"{source}: {numbers.shape[0] if numbers.ndim else 0} atomic numbers for "
                        f"{natoms} atoms per frame")
    if energies.shape != (nframes,):
        raise DataError(f"{source}: {energies.shape} energies for {nframes} frames")
    if forces.shape != coords.shape:
        raise DataError(f"{source}: forces have shape {forces.shape}, coordinates {coords.shape}")
    if nframes == 0:
        raise DataError(f"{source}: file holds no frames")
    for name, arr in (("coordinates", coords), ("energies", energies), ("forces", forces)):
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{source}: {name} contain NaN or inf",
                            hint="remove the broken frames from the file")


def read_npz(path: Path) -> Frames:
    """Read an rMD17 npz (kcal/mol) or sGDML-style npz (keys R, z, E, F; kcal/mol)."""
    try:
        data = np.load(path, allow_pickle=False)
        keys = set(data.files)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}", hint="is it a numpy .npz file?") from None
    if {"nuclear_charges", "coords", "energies", "forces"} <= keys:
        numbers, coords = data["nuclear_charges"], data["coords"]
        energies, forces = data["energies"], data["forces"]
    elif {"z", "R", "E", "F"} <= keys:
        numbers, coords, energies, forces = data["z"], data["R"], data["E"], data["F"]
        energies = energies.reshape(-1)
    else:
        raise DataError(
            f"{path} lacks the keys of an rMD17 file (found: {', '.join(sorted(keys)) or 'none'})",
            hint="rMD17 needs nuclear_charges, coords, energies, forces (sGDML: z, R, E, F)")
    numbers = np.asarray(numbers, dtype=np.int64)
    coords = np.asarray(coords, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64) * KCAL_MOL_TO_EV
    forces = np.asarray(forces, dtype=np.float64) * KCAL_MOL_TO_EV
    _validated(numbers, coords, energies, forces, str(path))
    return Frames(
        numbers=[numbers] * len(coords),
        positions=list(coords),
        energies=energies,
        forces=list(forces),
        source=str(path),
    )


def read_ase(path: Path) -> Frames:
    """Read every frame of an ASE-readable file that carries energies and forces (eV, eV/A)."""
    import ase.io

    try:
        atoms_list = ase.io.read(str(path), index=":")
    except Exception as exc:  # ase raises many types for unreadable files
        raise DataError(f"cannot read {path} with ASE: {exc}",
                        hint="use an rMD17 .npz or an extxyz file with energy and forces") from None
    if not atoms_list:
        raise DataError(f"{path}: file holds no frames")
    numbers, positions, energies, forces = [], [], [], []
    for k, atoms in enumerate(atoms_list):
        try:
            energies.append(float(atoms.get_potential_energy()))
            forces.append(np.asarray(atoms.get_forces(), dtype=np.float64))
        except Exception:
            raise DataError(f"{path}: frame {k} has no energy and forces",
                            hint="the file must carry reference energies and forces") from None
        numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
        positions.append(np.asarray(atoms.positions, dtype=np.float64))
    energies_arr = np.asarray(energies)
    for k in range(len(numbers)):
        _validated(numbers[k], positions[k][None], energies_arr[k:k + 1], forces[k][None],
                   f"{path} frame {k}")
    return Frames(numbers, positions, energies_arr, forces, source=str(path))


def read_frames(path: Path) -> Frames:
    """Read labelled frames from ``path``: ``.npz`` as rMD17/sGDML, anything else with ASE."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}", hint="check the path")
    if path.suffix == ".npz":
        return read_npz(path)
    return read_ase(path)
