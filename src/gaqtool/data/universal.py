"""The default structures for universal potentials, made by code (seeded; nothing downloaded).

Crystals of four families (metals, oxides, halides, semiconductors), each as a small supercell
that is strained (a random symmetric strain up to 3%) and rattled (Gaussian displacements of
0.03-0.12 A, the larger ones like thermal snapshots at several hundred kelvin), plus rMD17
aspirin frames with their DFT labels from the shipped sample. Crystals carry no labels: they
are evaluated against the FP32 parent ("teacher" mode). Calibration, validation and test use
different seeds for the crystals and disjoint aspirin frames, so the three parts share no
structure.
"""

from __future__ import annotations

import numpy as np

from gaqtool.data.frames import Frames, read_npz

__all__ = ["CRYSTALS", "universal_frames", "SPLIT_SEEDS"]

# name -> (family, ase.build.bulk arguments, supercell repeats); 8-32 atoms each
CRYSTALS: dict[str, tuple[str, dict, tuple[int, int, int]]] = {
    "Cu fcc": ("metal", dict(name="Cu", crystalstructure="fcc", a=3.61, cubic=True), (2, 2, 1)),
    "Al fcc": ("metal", dict(name="Al", crystalstructure="fcc", a=4.05, cubic=True), (2, 2, 1)),
    "Fe bcc": ("metal", dict(name="Fe", crystalstructure="bcc", a=2.87, cubic=True), (2, 2, 2)),
    "W bcc": ("metal", dict(name="W", crystalstructure="bcc", a=3.16, cubic=True), (2, 2, 2)),
    "Ti hcp": ("metal", dict(name="Ti", crystalstructure="hcp", a=2.95, c=4.69), (2, 2, 2)),
    "MgO rocksalt": ("oxide", dict(name="MgO", crystalstructure="rocksalt", a=4.21, cubic=True), (1, 1, 1)),
    "CaO rocksalt": ("oxide", dict(name="CaO", crystalstructure="rocksalt", a=4.81, cubic=True), (1, 1, 1)),
    "ZnO wurtzite": ("oxide", dict(name="ZnO", crystalstructure="wurtzite", a=3.25, c=5.21), (2, 2, 1)),
    "SrTiO3 perovskite": ("oxide", {}, (2, 1, 1)),
    "NaCl rocksalt": ("halide", dict(name="NaCl", crystalstructure="rocksalt", a=5.64, cubic=True), (1, 1, 1)),
    "LiF rocksalt": ("halide", dict(name="LiF", crystalstructure="rocksalt", a=4.03, cubic=True), (1, 1, 1)),
    "CsCl B2": ("halide", dict(name="CsCl", crystalstructure="cesiumchloride", a=4.12), (2, 2, 2)),
    "Si diamond": ("semiconductor", dict(name="Si", crystalstructure="diamond", a=5.43, cubic=True), (1, 1, 1)),
    "GaAs zincblende": ("semiconductor", dict(name="GaAs", crystalstructure="zincblende", a=5.65, cubic=True), (1, 1, 1)),
    "SiC zincblende": ("semiconductor", dict(name="SiC", crystalstructure="zincblende", a=4.36, cubic=True), (1, 1, 1)),
    "GaN wurtzite": ("semiconductor", dict(name="GaN", crystalstructure="wurtzite", a=3.19, c=5.19), (2, 2, 1)),
}

SPLIT_SEEDS = {"calib": 101, "val": 202, "test": 303}
ASPIRIN_FRAMES = {"calib": 8, "val": 4, "test": 8}
MAX_STRAIN = 0.03
RATTLE = (0.03, 0.12)  # range of the displacement standard deviation, Angstrom


def _perovskite():
    """Cubic SrTiO3, a = 3.905 A: Sr at the corner, Ti at the centre, O on the face centres."""
    from ase import Atoms

    a = 3.905
    return Atoms("SrTiO3", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0],
                                            [0.5, 0, 0.5], [0, 0.5, 0.5]],
                 cell=np.eye(3) * a, pbc=True)


def crystal(name: str, rng: np.random.Generator):
    """One strained, rattled supercell of ``CRYSTALS[name]`` as ``ase.Atoms``."""
    from ase.build import bulk

    _, arguments, repeats = CRYSTALS[name]
    atoms = (_perovskite() if not arguments else bulk(**arguments)) * repeats
    strain = rng.uniform(-MAX_STRAIN, MAX_STRAIN, size=(3, 3))
    strain = 0.5 * (strain + strain.T)
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    sigma = rng.uniform(*RATTLE)
    atoms.positions += rng.normal(scale=sigma, size=atoms.positions.shape)
    return atoms


def universal_frames(split: str, molecules: bool = True) -> Frames:
    """Frames of one part ('calib', 'val' or 'test'): every crystal once (unlabelled), then
    aspirin frames with DFT labels (calib/val from the shipped train sample, disjoint; test
    from the shipped test sample)."""
    from gaqtool.data.spec import sample_path, standard_split

    if split not in SPLIT_SEEDS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_SEEDS)}, got {split!r}")
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    numbers, positions, cells, pbc, names = [], [], [], [], []
    for name in CRYSTALS:
        atoms = crystal(name, rng)
        numbers.append(np.asarray(atoms.numbers, dtype=np.int64))
        positions.append(np.asarray(atoms.positions, dtype=np.float64))
        cells.append(np.asarray(atoms.cell[:], dtype=np.float64))
        pbc.append(np.ones(3, dtype=bool))
        names.append(name)
    count = len(numbers)
    energies = [np.nan] * count
    forces = [np.full_like(p, np.nan) for p in positions]
    stresses = [np.full((3, 3), np.nan) for _ in range(count)]
    if molecules:
        if split == "test":
            aspirin = read_npz(sample_path("test"))
        else:
            aspirin = standard_split(read_npz(sample_path("train")), "train" if split == "calib" else "val")
        picks = aspirin.subset(range(min(ASPIRIN_FRAMES[split], len(aspirin))))
        for k in range(len(picks)):
            numbers.append(picks.numbers[k])
            positions.append(picks.positions[k])
            cells.append(np.zeros((3, 3)))
            pbc.append(np.zeros(3, dtype=bool))
            energies.append(float(picks.energies[k]))
            forces.append(picks.forces[k])
            stresses.append(np.full((3, 3), np.nan))
            names.append(f"aspirin {k}")
    return Frames(numbers, positions, np.asarray(energies), forces,
                  source=f"gaqtool universal set ({split})", info={"names": names},
                  cells=cells, pbc=pbc, stresses=stresses)
