"""Tests for gaqtool.ase.GAQCalculator: same numbers as the model, FP32 and quantized files."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from gaqtool.config import QuantConfig
from gaqtool.data.graph import make_batch
from gaqtool.data.spec import resolve_data
from gaqtool.errors import UnknownElementError
from gaqtool.io.checkpoint import save_checkpoint
from gaqtool.io.loading import file_sha256
from gaqtool.io.safetensors_io import save_quantized
from gaqtool.models.potential import DEFAULT_CONFIG, build_model
from gaqtool.potential import energy_and_forces
from gaqtool.workflow import quantize_loaded

torch.set_num_threads(1)

TINY = dict(DEFAULT_CONFIG, num_channels=8, num_layers=2, lmax=2, num_heads=2, key_dim=4,
            species=[1, 6, 8], energy_shift={"1": -13.6, "6": -1029.0, "8": -2041.0},
            energy_scale=1.0, molecule="aspirin")


@pytest.fixture(scope="module")
def frames():
    return resolve_data("rmd17", "test", None, "aspirin").frames.subset(range(2))


@pytest.fixture(scope="module")
def files(tmp_path_factory, frames):
    directory = tmp_path_factory.mktemp("ase")
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    fp32 = save_checkpoint(directory / "tiny.pt", model, training={})
    config = QuantConfig.from_preset("w4a8", method="naive", calib_frames=2)
    quantized, plan = quantize_loaded(model, config, frames)
    naive = save_quantized(directory / "tiny_naive.safetensors", quantized, config, plan, file_sha256(fp32))
    # the same file, recording calibration structures with hydrogen and carbon only
    calibrated_hc = save_quantized(directory / "tiny_naive_hc.safetensors", quantized, config, plan,
                                   file_sha256(fp32), {"calibration": {"frames": 2, "elements": ["H", "C"]}})
    return {"fp32": fp32, "naive": naive, "calibrated_hc": calibrated_hc}


def _atoms(frames, k: int = 0) -> Atoms:
    return Atoms(numbers=frames.numbers[k], positions=frames.positions[k])


def test_import_resolves_to_the_ase_package():
    import ase

    import gaqtool.ase as gaq_ase

    assert Path(ase.__file__).parent.name == "ase" and "gaqtool" not in ase.__file__
    assert gaq_ase.Calculator.__module__ == "ase.calculators.calculator"


@pytest.mark.parametrize("kind, calculator_mode, model_mode", [
    ("fp32", "conservative", None),
    ("naive", "conservative", "conservative"),  # the calculator's default
    ("naive", None, None),                      # None: the file's own mode (ste)
    ("naive", "ste", "ste"),
])
def test_energy_and_forces_match_the_model(files, frames, kind, calculator_mode, model_mode):
    from gaqtool.ase import GAQCalculator
    from gaqtool.io.loading import load_model

    calc = GAQCalculator(files[kind], force_mode=calculator_mode)
    atoms = _atoms(frames)
    atoms.calc = calc
    from gaqtool.quant.apply import activation_rounding_off

    model = load_model(files[kind], force_mode=model_mode).model
    # in force mode 'conservative' the calculator reports E_s: the model with rounding off
    rounding = activation_rounding_off(model) if model_mode == "conservative" else contextlib.nullcontext()
    with rounding:
        energy, forces = energy_and_forces(model, make_batch(frames, [0], model.cutoff))
    assert atoms.get_potential_energy() == pytest.approx(float(energy.detach()[0]), abs=1e-6)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), forces.double().numpy(), atol=1e-6)
    assert atoms.get_forces().shape == (len(atoms), 3)


def test_neighbour_list_is_rebuilt_when_atoms_move(files, frames):
    from gaqtool.ase import GAQCalculator

    atoms = _atoms(frames)
    atoms.calc = GAQCalculator(files["fp32"])
    before = atoms.get_potential_energy()
    positions = atoms.get_positions()
    positions[0] += [0.0, 0.0, 50.0]  # far outside every cutoff: edges must disappear
    atoms.set_positions(positions)
    after = atoms.get_potential_energy()
    moved = frames.subset([0])
    moved.positions = [positions]
    model = atoms.calc.model
    expected, forces = energy_and_forces(model, make_batch(moved, [0], model.cutoff))
    assert after != pytest.approx(before, abs=1e-6)
    assert after == pytest.approx(float(expected.detach()[0]), abs=1e-6)
    np.testing.assert_allclose(atoms.get_forces()[0], 0.0, atol=1e-7)  # an isolated atom feels nothing


def test_unknown_element_is_a_clear_error(files):
    from gaqtool.ase import GAQCalculator

    atoms = Atoms("CCl", positions=[[0, 0, 0], [1.8, 0, 0]])
    atoms.calc = GAQCalculator(files["fp32"])
    with pytest.raises(UnknownElementError, match=r"Cl \(Z=17\)") as info:
        atoms.get_potential_energy()
    assert isinstance(info.value, ValueError)   # what ASE users catch for a bad structure
    assert "H, C, O" in info.value.hint


def test_elements_absent_from_calibration_are_warned_about_once(files, frames):
    import warnings

    from gaqtool.ase import GAQCalculator

    recorded = files["calibrated_hc"]
    atoms = _atoms(frames)
    atoms.calc = GAQCalculator(recorded)
    with pytest.warns(UserWarning, match=r"absent from the calibration structures \(O\)"):
        atoms.get_potential_energy()
    atoms.positions[0, 0] += 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # once, not at every MD step
        atoms.get_potential_energy()
        methane = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63],
                                          [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
        methane.calc = GAQCalculator(recorded)
        methane.get_potential_energy()          # covered: no warning
        unrecorded = _atoms(frames)
        unrecorded.calc = GAQCalculator(files["naive"])
        unrecorded.get_potential_energy()       # a file without the record: nothing to say


def test_periodic_cell_forces_and_stress_are_derivatives_of_the_energy(files):
    """A small periodic C/O cell with neighbours across its faces: forces match central
    differences of the energy, and stress the derivative under a symmetric strain, (1/V) dE/de
    (ASE's sign), through GAQCalculator in float64 precision of the differences."""
    from gaqtool.ase import GAQCalculator

    rng = np.random.default_rng(0)
    cell = np.array([[3.2, 0.0, 0.0], [0.4, 3.0, 0.0], [0.2, 0.3, 3.4]])
    atoms = Atoms("COCH", scaled_positions=rng.random((4, 3)), cell=cell, pbc=True)
    calc = GAQCalculator(files["fp32"])
    calc.model.double()
    atoms.calc = calc
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 1e-3 and np.abs(stress).max() > 1e-5  # something to compare

    def energy(positions=None, strain=None):
        moved = atoms.copy()
        if strain is not None:
            moved.set_cell(cell @ (np.eye(3) + strain), scale_atoms=True)
        if positions is not None:
            moved.positions = positions
        moved.calc = calc
        return moved.get_potential_energy()

    h = 1e-4
    for k, axis in ((0, 0), (2, 1), (3, 2)):
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[k, axis] += h
        minus[k, axis] -= h
        assert -(energy(plus) - energy(minus)) / (2 * h) == pytest.approx(forces[k, axis], abs=1e-5)
    volume = atoms.get_volume()
    voigt = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for index, (i, j) in enumerate(voigt):
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = h if i != j else h
        scale = 2.0 if i != j else 1.0  # an off-diagonal strain component enters twice
        derivative = (energy(strain=strain) - energy(strain=-strain)) / (2 * h) / volume / scale
        assert derivative == pytest.approx(stress[index], abs=1e-6)


def test_default_calculator_forces_are_the_gradient_of_its_reported_energy(files, frames):
    """For an activation-quantized file and the calculator's defaults, the forces equal the
    finite-difference gradient of the energy it reports (E_s); E_q, on request only, differs.
    The straight-through forces of the same file are another function."""
    from gaqtool.ase import GAQCalculator

    conservative = GAQCalculator(files["naive"])
    atoms = _atoms(frames)
    atoms.calc = conservative
    forces, energy = atoms.get_forces(), atoms.get_potential_energy()
    assert "quantized_energy" not in conservative.results  # nothing computed that nobody asked for
    h = 1e-3
    for k, axis in ((3, 0), (7, 2)):
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[k, axis] += sign * h
            moved.calc = conservative
            energies.append(moved.get_potential_energy())
        assert -(energies[0] - energies[1]) / (2 * h) == pytest.approx(forces[k, axis], abs=2e-3)
    asking = GAQCalculator(files["naive"], quantized_energy=True)
    atoms.calc = asking
    assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-9)
    assert asking.results["quantized_energy"] != pytest.approx(asking.results["energy"], abs=1e-4)
    straight = GAQCalculator(files["naive"], force_mode="ste")
    atoms.calc = straight
    assert np.abs(atoms.get_forces() - forces).max() > 1e-6  # ste forces are another function
