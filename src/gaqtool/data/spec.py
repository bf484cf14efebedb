"""Resolve a ``--data`` spec to frames: a file path, ``rmd17:<molecule>``, plain ``rmd17`` (the
model's molecule) or ``universal`` (crystals and molecules made by code, for universal models;
``gaqtool.data.universal``).

rMD17 files are looked up in ``--rmd17-dir`` / ``$GAQTOOL_RMD17_DIR``. Two layouts are accepted:
pre-split ``rmd17_<mol>_{train,test}_01.npz`` (as in ``../shared/data/rmd17``), or the official
full ``rmd17_<mol>.npz`` (optionally under ``npz_data/``) with ``index_{train,test}_01.csv``
(optionally under ``splits/``). With no directory configured, the shipped aspirin sample is used.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np

from gaqtool.data.frames import Frames, read_frames, read_npz
from gaqtool.errors import DataError

__all__ = [
    "rmd17_protocol",
    "RMD17_MOLECULES",
    "RMD17_ENV",
    "DataSelection",
    "resolve_data",
    "standard_split",
    "sample_path",
    "default_spec",
    "UNIVERSAL",
    "check_spec",
    "composition_mismatch",
    "element_symbols",
    "uncalibrated_elements",
]

UNIVERSAL = "universal"
_UNIVERSAL_PARTS = {"train": "calib", "train-all": "calib", "val": "val", "test": "test"}

# atoms per element (atomic number: count) of each rMD17 molecule
RMD17_COMPOSITION = {
    "aspirin": {1: 8, 6: 9, 8: 4}, "azobenzene": {1: 10, 6: 12, 7: 2}, "benzene": {1: 6, 6: 6},
    "ethanol": {1: 6, 6: 2, 8: 1}, "malonaldehyde": {1: 4, 6: 3, 8: 2}, "naphthalene": {1: 8, 6: 10},
    "paracetamol": {1: 9, 6: 8, 7: 1, 8: 2}, "salicylic": {1: 6, 6: 7, 8: 3}, "toluene": {1: 8, 6: 7},
    "uracil": {1: 4, 6: 4, 7: 2, 8: 2},
}
RMD17_MOLECULES = tuple(RMD17_COMPOSITION)
RMD17_ENV = "GAQTOOL_RMD17_DIR"
SPLIT_SEED = 0
NUM_VALIDATION = 50


@dataclass
class DataSelection:
    """Frames plus where they came from.

    note: for the terminal (with the directory, and how to configure one if none was)
    description: short and machine-independent, for reports stored in files
    """

    frames: Frames
    note: str
    description: str = ""


def sample_path(split: str) -> Path:
    """Path of the shipped rMD17 aspirin sample (split 'train': 100 frames, 'test': 200)."""
    return Path(str(resources.files("gaqtool") / "data_files" / f"rmd17_aspirin_{split}_sample.npz"))


def _read_rmd17_split(directory: Path, molecule: str, split: str) -> Frames:
    """Frames of ``split`` ('train' or 'test', split 01) for ``molecule`` in ``directory``."""
    presplit = directory / f"rmd17_{molecule}_{split}_01.npz"
    if presplit.is_file():
        return read_npz(presplit)
    for full in (directory / f"rmd17_{molecule}.npz", directory / "npz_data" / f"rmd17_{molecule}.npz"):
        if full.is_file():
            break
    else:
        raise DataError(f"no rMD17 file for '{molecule}' in {directory}",
                        hint=f"expected rmd17_{molecule}_{split}_01.npz or rmd17_{molecule}.npz")
    for csv in (directory / f"index_{split}_01.csv", directory / "splits" / f"index_{split}_01.csv"):
        if csv.is_file():
            break
    else:
        raise DataError(f"no split file index_{split}_01.csv next to {full}",
                        hint="put the official rMD17 split CSVs in the directory or its splits/")
    frames = read_npz(full)
    indices = np.loadtxt(csv, dtype=np.int64).reshape(-1)
    if indices.size == 0 or indices.min() < 0 or indices.max() >= len(frames):
        raise DataError(f"{csv}: indices outside 0..{len(frames) - 1}")
    return frames.subset(indices)


def standard_split(frames: Frames, part: str) -> Frames:
    """The standard rMD17 protocol on the train split: 950 'train' / 50 'val' frames (seeded)."""
    if part == "all":
        return frames
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(frames))
    nval = min(NUM_VALIDATION, max(1, len(frames) // 10))
    if part == "val":
        return frames.subset(np.sort(perm[:nval]))
    if part == "train":
        return frames.subset(np.sort(perm[nval:]))
    raise ValueError(part)


def _rmd17_dir(rmd17_dir: Path | str | None) -> Path | None:
    value = rmd17_dir if rmd17_dir is not None else os.environ.get(RMD17_ENV) or None
    if value is None:
        return None
    path = Path(value)
    if not path.is_dir():
        raise DataError(f"rMD17 directory not found: {path}",
                        hint=f"pass an existing directory with --rmd17-dir or ${RMD17_ENV}")
    return path


def _check_molecule(molecule: str, context: str = "") -> None:
    if molecule not in RMD17_MOLECULES:
        raise DataError(f"{context}unknown rMD17 molecule '{molecule}'",
                        hint="choose one of: " + ", ".join(RMD17_MOLECULES))


def check_spec(spec: str | None, option: str) -> None:
    """DataError now, before any work, for a spec that cannot resolve: an unknown rMD17
    molecule or a file that does not exist (its contents are read later)."""
    if spec is None or spec in (UNIVERSAL, "rmd17"):
        return
    if spec.startswith("rmd17:"):
        _check_molecule(spec.split(":", 1)[1].lower(), f"{option} {spec}: ")
        return
    path = Path(spec)
    if path.is_dir():
        raise DataError(f"{option} {spec} is a directory, not a data file", hint="name a file in it")
    if not path.is_file():
        raise DataError(f"{option} {spec}: data file not found",
                        hint="give a file, rmd17:<molecule> or universal")


def composition_mismatch(frames: Frames, molecule: str | None) -> str | None:
    """A warning when the frames are not the molecule the model was fitted to (its energies
    there mean nothing: e.g. ethanol given to the aspirin model), else None."""
    expected = RMD17_COMPOSITION.get(molecule or "")
    if expected is None or not len(frames):
        return None
    differing = 0
    for numbers in frames.numbers:
        values, counts = np.unique(np.asarray(numbers), return_counts=True)
        differing += dict(zip(values.tolist(), counts.tolist())) != expected
    if not differing:
        return None
    from ase.data import chemical_symbols

    formula = "".join(f"{chemical_symbols[z]}{n if n > 1 else ''}"
                      for z, n in sorted(expected.items(), key=lambda i: (i[0] != 6, i[0])))  # C first
    return (f"{differing} of {len(frames)} frames are not {molecule} ({formula}), the molecule the model "
            "was fitted to: its energies and forces there are not meaningful")


def element_symbols(numbers: Sequence[np.ndarray]) -> list[str]:
    """The chemical symbols in ``numbers`` (per structure, atomic numbers, e.g.
    ``Frames.numbers``), in order of atomic number."""
    from ase.data import chemical_symbols

    present = np.unique(np.concatenate([np.asarray(n) for n in numbers])) if len(numbers) else []
    return [chemical_symbols[int(z)] for z in present]


def uncalibrated_elements(calibrated: list[str] | None, numbers: Sequence[np.ndarray]) -> str | None:
    """A warning when the structures ``numbers`` hold elements that the calibration structures
    (their symbols, ``calibrated``) did not: activation grids and error-compensating weight
    rounding were fitted without them, so errors there can be far larger. None if every
    element is covered, or if ``calibrated`` is unknown (files written before it was recorded)."""
    if not calibrated or not len(numbers):
        return None
    covered = set(calibrated)
    missing = [s for s in element_symbols(numbers) if s not in covered]
    if not missing:
        return None
    affected = sum(not covered.issuperset(element_symbols([n])) for n in numbers)
    return (f"{affected} of {len(numbers)} structures hold elements absent from the calibration "
            f"structures ({', '.join(missing)}): the quantized model was calibrated without them, "
            "so expect larger errors there (calibrate with --calib-data that covers them)")


def default_spec(molecule: str | None) -> str:
    """The data a model is checked on when none is given: rMD17 of the molecule it was fitted
    to, or the universal set for a model with no molecule (e.g. SevenNet)."""
    return "rmd17" if molecule else UNIVERSAL


def resolve_data(spec: str, split: str = "test", rmd17_dir: Path | str | None = None,
                 default_molecule: str | None = None) -> DataSelection:
    """Frames for ``spec``.

    spec:  a file path, ``rmd17:<molecule>``, ``rmd17`` (molecule = ``default_molecule``) or
           ``universal``.
    split: for rMD17, 'test' (1000 frames), 'train' (950), 'val' (50) or 'train-all' (1000);
           for ``universal`` train -> its calibration part; ignored for plain files.
    """
    if spec == UNIVERSAL:
        from gaqtool.data.universal import universal_frames

        part = _UNIVERSAL_PARTS[split]
        frames = universal_frames(part)
        crystals = int(sum(1 for p in frames.pbc if p.any()))
        note = (f"gaqtool universal set, {part} part: {crystals} strained and rattled crystals "
                f"(no labels) and {len(frames) - crystals} rMD17 aspirin frames (DFT labels)")
        return DataSelection(frames, note, f"universal set ({part}): {len(frames)} structures")
    if not (spec == "rmd17" or spec.startswith("rmd17:")):
        frames = read_frames(Path(spec))
        count = f"{len(frames)} frame{'s' if len(frames) != 1 else ''}"
        return DataSelection(frames, f"{count} from {spec}", f"{count} of {Path(spec).name}")
    molecule = spec.split(":", 1)[1] if ":" in spec else default_molecule
    if not molecule:
        raise DataError("no molecule given for --data rmd17",
                        hint="use --data rmd17:<molecule>, e.g. rmd17:aspirin")
    molecule = molecule.lower()
    _check_molecule(molecule)
    file_split = "test" if split == "test" else "train"
    directory = _rmd17_dir(rmd17_dir)
    if directory is None:
        if molecule != "aspirin":
            raise DataError("no rMD17 directory configured, and the shipped sample is aspirin only",
                            hint=f"pass --rmd17-dir or set ${RMD17_ENV} to a directory with rMD17 files")
        frames = read_npz(sample_path(file_split))
        note = (f"no rMD17 directory configured (--rmd17-dir / ${RMD17_ENV}): using the shipped "
                f"sample of {len(frames)} aspirin {file_split} frames")
        if split in ("train", "val"):
            frames = standard_split(frames, split)
            note += f", its {split} part: {len(frames)} frames"
        description = f"shipped rMD17 aspirin {file_split} sample, {split}: {len(frames)} frames"
    else:
        frames = _read_rmd17_split(directory, molecule, file_split)
        if split in ("train", "val"):
            frames = standard_split(frames, split)
        note = f"rMD17 {molecule}, split 01 {split}: {len(frames)} frames from {directory}"
        description = f"rMD17 {molecule}, split 01 {split}: {len(frames)} frames"
    frames.molecule = molecule
    return DataSelection(frames, note, description)


def rmd17_protocol(molecule: str, rmd17_dir: Path | str | None = None) -> tuple[Frames, Frames, Frames]:
    """(train 950, validation 50, test 1000) frames of the standard rMD17 protocol for
    ``molecule`` (split 01; the shipped sample's sizes when no directory is configured)."""
    return tuple(resolve_data("rmd17", split, rmd17_dir, molecule).frames  # type: ignore[return-value]
                 for split in ("train", "val", "test"))
