"""Data layer: units, the standard split, ASE/sGDML readers and every bad-input error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaqtool.data import KCAL_MOL_TO_EV, make_batch, read_frames, resolve_data, sample_path, standard_split
from gaqtool.errors import DataError


def test_rmd17_units_are_converted_to_ev(test_frames):
    raw = np.load(sample_path("test"))
    assert test_frames.energies[0] == pytest.approx(raw["energies"][0] * KCAL_MOL_TO_EV)
    assert np.allclose(test_frames.forces[3], raw["forces"][3] * KCAL_MOL_TO_EV)
    assert -17700 < test_frames.energies.mean() < -17500  # aspirin, eV
    assert list(test_frames.numbers[0][:3]) == [6, 6, 6]


def test_standard_split_is_disjoint_and_sized(train_frames):
    train = standard_split(train_frames, "train")
    val = standard_split(train_frames, "val")
    assert len(train) + len(val) == len(train_frames)
    keys_train = {p.tobytes() for p in train.positions}
    keys_val = {p.tobytes() for p in val.positions}
    assert not keys_train & keys_val


def test_train_and_test_samples_share_no_frame(train_frames, test_frames):
    a = np.load(sample_path("train"))["old_indices"]
    b = np.load(sample_path("test"))["old_indices"]
    assert not set(a.tolist()) & set(b.tolist())


def test_presplit_directory_layout(tmp_path):
    src = np.load(sample_path("test"))
    np.savez(tmp_path / "rmd17_ethanol_test_01.npz", **{k: src[k] for k in src.files})
    sel = resolve_data("rmd17:ethanol", "test", tmp_path)
    assert str(tmp_path) in sel.note and str(tmp_path) not in sel.description  # files: no directories
    assert sel.description.startswith("rMD17 ethanol, split 01 test")
    assert len(sel.frames) == len(src["coords"]) and sel.frames.molecule == "ethanol"


def test_full_file_with_split_csv(tmp_path):
    src = np.load(sample_path("test"))
    (tmp_path / "npz_data").mkdir()
    (tmp_path / "splits").mkdir()
    np.savez(tmp_path / "npz_data" / "rmd17_aspirin.npz", **{k: src[k] for k in src.files})
    np.savetxt(tmp_path / "splits" / "index_test_01.csv", np.arange(0, 40, 2), fmt="%d")
    sel = resolve_data("rmd17:aspirin", "test", tmp_path)
    assert len(sel.frames) == 20
    assert np.allclose(sel.frames.positions[1], src["coords"][2])


def test_no_directory_uses_shipped_sample_and_says_so():
    sel = resolve_data("rmd17", "test", None, default_molecule="aspirin")
    assert "shipped sample" in sel.note and len(sel.frames) == 200
    assert "shipped" in sel.description and "--rmd17-dir" not in sel.description


def test_extxyz_via_ase(tmp_path, test_frames):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    images = []
    for i in range(3):
        atoms = Atoms(numbers=test_frames.numbers[i], positions=test_frames.positions[i])
        atoms.calc = SinglePointCalculator(atoms, energy=test_frames.energies[i], forces=test_frames.forces[i])
        images.append(atoms)
    path = tmp_path / "three.extxyz"
    write(path, images)
    frames = read_frames(path)
    assert len(frames) == 3
    assert frames.energies[2] == pytest.approx(test_frames.energies[2])
    assert np.allclose(frames.forces[1], test_frames.forces[1], atol=1e-6)


def test_sgdml_layout(tmp_path):
    src = np.load(sample_path("test"))
    np.savez(tmp_path / "eth.npz", R=src["coords"][:5], z=src["nuclear_charges"],
             E=src["energies"][:5, None], F=src["forces"][:5])
    frames = read_frames(tmp_path / "eth.npz")
    assert len(frames) == 5 and frames.energies.shape == (5,)


def test_radius_graph_respects_cutoff_and_molecules(test_frames):
    batch = make_batch(test_frames, [0, 1], cutoff=3.0)
    d = (batch.positions[batch.edge_src] - batch.positions[batch.edge_dst]).norm(dim=-1)
    assert bool((d < 3.0).all()) and bool((batch.edge_src != batch.edge_dst).all())
    assert bool((batch.molecule_index[batch.edge_src] == batch.molecule_index[batch.edge_dst]).all())
    dense = torch.cdist(batch.positions[:21], batch.positions[:21])
    assert int(((dense < 3.0).sum() - 21)) == int((batch.molecule_index[batch.edge_src] == 0).sum())


@pytest.mark.parametrize("case", ["missing_keys", "nan", "shape", "empty"])
def test_bad_npz_gives_clear_error(tmp_path, case):
    src = {k: v for k, v in np.load(sample_path("test")).items()}
    if case == "missing_keys":
        del src["forces"]
    elif case == "nan":
        src["energies"] = src["energies"].copy()
        src["energies"][3] = np.nan
    elif case == "shape":
        src["forces"] = src["forces"][:, :5]
    else:
        src = {k: (v[:0] if v.ndim == 3 or k == "energies" else v) for k, v in src.items()}
    np.savez(tmp_path / "bad.npz", **src)
    with pytest.raises(DataError) as info:
        read_frames(tmp_path / "bad.npz")
    assert "bad.npz" in info.value.message


def test_unknown_molecule_missing_file_and_empty_selection(tmp_path, test_frames):
    with pytest.raises(DataError, match="unknown rMD17 molecule"):
        resolve_data("rmd17:unobtainium", "test", None)
    with pytest.raises(DataError, match="not found"):
        resolve_data(str(tmp_path / "nope.xyz"), "test")
    with pytest.raises(DataError, match="no rMD17 file"):
        resolve_data("rmd17:toluene", "test", tmp_path)
    with pytest.raises(DataError, match="empty"):
        test_frames.subset([])
    with pytest.raises(DataError, match="shipped sample is aspirin only"):
        resolve_data("rmd17:ethanol", "test", None)


def test_rmd17_protocol_gives_disjoint_train_and_validation_frames():
    from gaqtool.data.spec import rmd17_protocol

    train, val, test = rmd17_protocol("aspirin")  # shipped sample: 100 train frames split 90 / 10
    assert (len(train), len(val), len(test)) == (90, 10, 200)
    train_keys = {p.tobytes() for p in train.positions}
    assert not any(p.tobytes() in train_keys for p in val.positions)
