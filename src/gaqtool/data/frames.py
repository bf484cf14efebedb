"""In-memory labelled frames (molecules or periodic cells) and their readers (rMD17 npz,
sGDML npz, any ASE-readable file such as extxyz or traj).

All arrays use eV and Angstrom. Frames may differ in composition (ASE files), so per-frame
arrays are kept in lists; rMD17 files give frames of one molecule. Labels may be missing: an
unlabelled file has NaN energies and forces (evaluated against the FP32 parent, "teacher" mode).
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from gaqtool.errors import DataError

__all__ = ["Frames", "KCAL_MOL_TO_EV", "read_npz", "read_ase", "read_frames", "shared_structures"]

KCAL_MOL_TO_EV = 0.0433641
"""1 kcal/mol in eV (the constant nequip's rMD17 loader uses)."""


@dataclass
class Frames:
    """Labelled frames.

    numbers:   list of (N_i,) int64 atomic numbers
    positions: list of (N_i, 3) float64, Angstrom
    energies:  (F,) float64 total energies, eV (NaN if unlabelled)
    forces:    list of (N_i, 3) float64, eV/Angstrom (NaN if unlabelled)
    source:    human-readable origin, shown in reports
    cells:     list of (3, 3) float64 lattice vectors (rows, Angstrom), or None: no cells
    pbc:       list of (3,) bool periodic directions, or None: none periodic
    stresses:  list of (3, 3) float64 stress (ASE sign convention, eV/A^3; NaN where
               unknown), or None: no stress labels
    """

    numbers: list[np.ndarray]
    positions: list[np.ndarray]
    energies: np.ndarray
    forces: list[np.ndarray]
    source: str = ""
    molecule: str | None = None
    info: dict = field(default_factory=dict)
    cells: list[np.ndarray] | None = None
    pbc: list[np.ndarray] | None = None
    stresses: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.numbers)

    def cell(self, i: int) -> np.ndarray:
        """(3, 3) lattice vectors of frame ``i`` (zeros for a molecule)."""
        return np.zeros((3, 3)) if self.cells is None else self.cells[i]

    def periodic(self, i: int) -> np.ndarray:
        """(3,) bool periodic directions of frame ``i``."""
        return np.zeros(3, dtype=bool) if self.pbc is None else self.pbc[i]

    @property
    def any_periodic(self) -> bool:
        return self.pbc is not None and any(bool(np.any(p)) for p in self.pbc)

    @property
    def has_energy_labels(self) -> bool:
        return bool(np.all(np.isfinite(self.energies)))

    @property
    def has_force_labels(self) -> bool:
        return all(bool(np.all(np.isfinite(f))) for f in self.forces)

    def with_labels(self, energies: np.ndarray, forces: list[np.ndarray],
                    stresses: list[np.ndarray] | None) -> "Frames":
        """The same structures with other labels (e.g. an FP32 teacher's predictions)."""
        return replace(self, energies=np.asarray(energies, dtype=np.float64), forces=list(forces),
                       stresses=None if stresses is None else list(stresses), info=dict(self.info))

    def subset(self, indices) -> "Frames":
        """Frames at ``indices`` (any int sequence), same order."""
        idx = [int(i) for i in indices]
        if not idx:
            raise DataError(f"empty frame selection from {self.source}",
                            hint="choose a non-empty range of frames")
        pick = (lambda values: None if values is None else [values[i] for i in idx])
        return Frames(
            numbers=[self.numbers[i] for i in idx],
            positions=[self.positions[i] for i in idx],
            energies=self.energies[idx],
            forces=[self.forces[i] for i in idx],
            source=self.source,
            molecule=self.molecule,
            info=dict(self.info),
            cells=pick(self.cells),
            pbc=pick(self.pbc),
            stresses=pick(self.stresses),
        )

    @property
    def num_atoms(self) -> np.ndarray:
        """(F,) atoms per frame."""
        return np.array([len(z) for z in self.numbers])

    def fingerprints(self) -> set[bytes]:
        """One key per structure (atomic numbers and positions rounded to 1e-6 A), to find
        structures two sets share."""
        return {np.asarray(z, dtype=np.int64).tobytes() + np.round(np.asarray(x), 6).tobytes()
                for z, x in zip(self.numbers, self.positions)}


def shared_structures(a: "Frames", b: "Frames") -> int:
    """How many structures of ``a`` also occur in ``b`` (same elements and positions)."""
    return len(a.fingerprints() & b.fingerprints())


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


def _npz_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file, or a one-line DataError saying what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not an .npz file", hint="name the .npz file in it")
    if not path.is_file():
        raise DataError(f"data file not found: {path}", hint="check the path")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path} is empty (0 bytes)", hint="give an rMD17 or sGDML .npz file (numpy.savez)")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            zip_start = handle.read(4) == b"PK\x03\x04"
        if zip_start:
            raise DataError(f"{path} is truncated or corrupted (a zip archive without its end)",
                            hint="download or write the file again")
        raise DataError(f"{path} is not an .npz file (not a zip archive)",
                        hint="give an rMD17 or sGDML .npz file (numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"{path} is truncated or corrupted: {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}",
                        hint="download or write the file again") from None


def read_npz(path: Path) -> Frames:
    """Read an rMD17 npz (kcal/mol) or sGDML-style npz (keys R, z, E, F; kcal/mol)."""
    data = _npz_arrays(path)
    keys = set(data)
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


def _ase_label(atoms, name: str):
    """``atoms.get_<name>()`` from its calculator, or None where the file has no such label."""
    if atoms.calc is None:
        return None
    try:
        return np.asarray(getattr(atoms, f"get_{name}")(), dtype=np.float64)
    except Exception:  # ASE raises PropertyNotImplementedError and others for absent labels
        return None


def read_ase(path: Path) -> Frames:
    """Read every frame of an ASE-readable file (extxyz, traj, ...): cells and periodic
    boundary conditions, and energy, forces and stress labels where the file has them (ASE's
    conventions: eV, eV/A, eV/A^3). Frames without energy and forces are kept unlabelled (NaN)."""
    import ase.io

    try:
        atoms_list = ase.io.read(str(path), index=":")
    except Exception as exc:  # ase raises many types for unreadable files
        raise DataError(f"cannot read {path} with ASE: {str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}",
                        hint="use an rMD17 .npz, or an extxyz/traj file ASE can read") from None
    if not atoms_list:
        raise DataError(f"{path}: file holds no frames")
    numbers, positions, energies, forces, cells, pbc, stresses = [], [], [], [], [], [], []
    for k, atoms in enumerate(atoms_list):
        energy = _ase_label(atoms, "potential_energy")
        force = _ase_label(atoms, "forces")
        stress = _ase_label(atoms, "stress") if np.any(atoms.pbc) else None
        numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
        positions.append(np.asarray(atoms.positions, dtype=np.float64))
        energies.append(float(energy) if energy is not None else np.nan)
        forces.append(force if force is not None and force.shape == positions[-1].shape
                      else np.full_like(positions[-1], np.nan))
        cells.append(np.asarray(atoms.cell[:], dtype=np.float64))
        pbc.append(np.asarray(atoms.pbc, dtype=bool))
        stresses.append(_stress_matrix(stress))
        if np.any(pbc[-1]) and abs(np.linalg.det(cells[-1][pbc[-1]][:, pbc[-1]])) < 1e-6:
            raise DataError(f"{path} frame {k}: periodic but its cell has no volume",
                            hint="give the frame its lattice vectors, or pbc=False for a molecule")
    energies_arr = np.asarray(energies)
    for k in range(len(numbers)):
        if not np.all(np.isfinite(positions[k])):
            raise DataError(f"{path} frame {k}: positions contain NaN or inf")
    frames = Frames(numbers, positions, energies_arr, forces, source=str(path),
                    cells=cells, pbc=pbc, stresses=stresses)
    labelled = [np.isfinite(e) and np.all(np.isfinite(f)) for e, f in zip(energies_arr, forces)]
    if any(labelled) and not all(labelled):
        raise DataError(f"{path}: {len(labelled) - sum(labelled)} of {len(labelled)} frames lack "
                        "energy or forces", hint="label every frame, or none (teacher mode)")
    return frames


def _stress_matrix(stress: np.ndarray | None) -> np.ndarray:
    """ASE stress (Voigt xx, yy, zz, yz, xz, xy, or 3x3) -> (3, 3); NaN when absent."""
    if stress is None:
        return np.full((3, 3), np.nan)
    if stress.shape == (3, 3):
        return stress
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def read_frames(path: Path) -> Frames:
    """Read labelled frames from ``path``: ``.npz`` as rMD17/sGDML, anything else with ASE."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a data file", hint="name a file in it")
    if not path.is_file():
        raise DataError(f"data file not found: {path}", hint="check the path")
    if path.suffix == ".npz":
        return read_npz(path)
    return read_ase(path)
