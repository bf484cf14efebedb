"""Tests for gaqtool.md: NVE energy conservation, seeded starts, blow-up detection, trajectories.

Measured on the tiny untrained model below (200 steps x 0.5 fs from 300 K, aspirin frame 0,
three initialisation seeds): max |E_total - E_total(0)| 0.6-1.9e-4 meV/atom, |drift| 0.2-1.2e-4
meV/atom/ps. The bounds (1e-2 meV/atom, 5e-2 meV/atom/ps) leave a factor > 50; a calculator whose
forces are 1.2x the energy gradient breaks them by orders of magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.io import read

from gaqtool.ase import GAQCalculator
from gaqtool.data.spec import resolve_data
from gaqtool.md import (MDSettings, blowup_reason, energy_drift, energy_scatter, initial_state, run_nve,
                        write_trajectory)
from gaqtool.models.potential import DEFAULT_CONFIG, build_model

torch.set_num_threads(1)

TINY = dict(DEFAULT_CONFIG, num_channels=8, num_layers=2, lmax=2, num_heads=2, key_dim=4,
            species=[1, 6, 8], energy_shift={}, energy_scale=1.0, molecule="aspirin")
MAX_DEVIATION_MEV_ATOM = 1e-2
MAX_DRIFT_MEV_ATOM_PS = 5e-2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY).eval()


@pytest.fixture(scope="module")
def start():
    frames = resolve_data("rmd17", "test", None, "aspirin").frames
    return initial_state(frames.numbers[0], frames.positions[0], 300.0, seed=0)


class ScaledForces(Calculator):
    """Forces = factor * (-dE/dx): not the gradient of the reported energy (non-conservative)."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, inner: Calculator, factor: float, nan_after: int | None = None):
        super().__init__()
        self.inner, self.factor, self.nan_after, self.calls = inner, factor, nan_after, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        energy = self.inner.get_potential_energy(self.atoms)
        forces = self.inner.get_forces(self.atoms) * self.factor
        if self.nan_after is not None and self.calls > self.nan_after:
            energy = float("nan")
        self.results = {"energy": energy, "forces": forces}


def test_nve_conserves_total_energy(model, start):
    result = run_nve(start, GAQCalculator(model), MDSettings(steps=200, timestep_fs=0.5, log_every=50))
    summary = result.summary()
    assert summary["steps_done"] == 200 and not summary["blew_up"]
    assert summary["max_abs_energy_deviation_mev_atom"] < MAX_DEVIATION_MEV_ATOM
    assert abs(summary["drift_mev_atom_ps"]) < MAX_DRIFT_MEV_ATOM_PS
    assert 100 < summary["temperature_mean_k"] < 500
    assert len(result.snapshots) == 5  # steps 0, 50, 100, 150, 200
    np.testing.assert_array_equal(start.get_velocities(), initial_state(
        start.numbers, start.positions, 300.0, seed=0).get_velocities())  # start not modified


def test_non_conservative_forces_break_the_bound(model, start):
    calc = ScaledForces(GAQCalculator(model), factor=1.2)
    summary = run_nve(start, calc, MDSettings(steps=100, timestep_fs=0.5, log_every=50)).summary()
    assert summary["max_abs_energy_deviation_mev_atom"] > 10 * MAX_DEVIATION_MEV_ATOM


def test_initial_state_is_seeded_and_has_no_drift_or_spin(start):
    again = initial_state(start.numbers, start.positions, 300.0, seed=0)
    other = initial_state(start.numbers, start.positions, 300.0, seed=1)
    np.testing.assert_array_equal(again.get_velocities(), start.get_velocities())
    assert not np.allclose(other.get_velocities(), start.get_velocities())
    np.testing.assert_allclose(start.get_momenta().sum(0), 0.0, atol=1e-10)
    np.testing.assert_allclose(start.get_angular_momentum(), 0.0, atol=1e-8)
    assert 100 < start.get_temperature() < 500


def test_nan_energy_stops_the_run(model, start):
    calc = ScaledForces(GAQCalculator(model), factor=1.0, nan_after=5)
    result = run_nve(start, calc, MDSettings(steps=50, log_every=10))
    summary = result.summary()
    assert summary["blew_up"] and "NaN" in summary["blowup_reason"]
    assert summary["steps_done"] < 10
    assert np.isfinite(summary["max_abs_energy_deviation_mev_atom"])


def test_blowup_reasons(start):
    forces = np.zeros((len(start), 3))
    assert blowup_reason(start, -1.0, forces, 10.0, 3000.0) is None
    far = start.copy()
    far.positions[3] += [0.0, 25.0, 0.0]
    assert "centroid" in blowup_reason(far, -1.0, forces, 10.0, 3000.0)
    hot = start.copy()
    hot.set_velocities(start.get_velocities() * 10.0)  # 100x the temperature
    assert "temperature" in blowup_reason(hot, -1.0, forces, 10.0, 3000.0)
    assert "NaN" in blowup_reason(start, -1.0, forces * np.nan, 10.0, 3000.0)


def test_energy_drift_is_the_fitted_slope():
    t = np.linspace(0.0, 1.0, 11)  # ps
    energy = -100.0 + 0.021 * t + 1e-4 * np.sin(40 * t)  # eV, 21 atoms -> ~1 meV/atom/ps
    assert energy_drift(t, energy, 21) == pytest.approx(1.0, abs=0.05)
    assert energy_drift(t[:1], energy[:1], 21) is None


def test_trajectory_round_trip(model, start, tmp_path):
    result = run_nve(start, GAQCalculator(model), MDSettings(steps=4, log_every=2))
    path = write_trajectory(tmp_path / "run.traj", result.snapshots)
    images = read(path, index=":")
    assert len(images) == 3
    assert images[-1].get_potential_energy() == pytest.approx(result.potential_energy[-1])
    assert [p.name for p in tmp_path.iterdir()] == ["run.traj"]  # no temporary file left


def test_conservative_force_mode_conserves_the_energy_it_reports(model, start):
    """Force mode 'conservative' integrates E_s (activation rounding off) and reports it: E + E_kin
    keeps the FP32 bound; E_q, tracked only on request, wanders by the rounding gap."""
    from gaqtool.config import QuantConfig
    from gaqtool.workflow import quantize_loaded

    calibration = resolve_data("rmd17", "train", None, "aspirin").frames
    config = QuantConfig.from_preset("w4a8", method="gaq", force_mode="conservative", calib_frames=16)
    quantized = quantize_loaded(model, config, calibration)[0]
    settings = MDSettings(steps=100, log_every=50)
    fp32 = run_nve(start, GAQCalculator(model), settings).summary()
    plain = run_nve(start, GAQCalculator(quantized), settings)
    summary = plain.summary()
    assert plain.quantized_potential_energy is None and "max_abs_gap_change_mev_atom" not in summary
    bound = 3.0 * fp32["max_abs_energy_deviation_mev_atom"]  # meV/atom, from the FP32 run
    assert summary["max_abs_energy_deviation_mev_atom"] < bound
    tracked = run_nve(start, GAQCalculator(quantized, quantized_energy=True), settings).summary()
    assert tracked["drift_mev_atom_ps"] == pytest.approx(summary["drift_mev_atom_ps"], rel=1e-6)
    assert tracked["max_abs_gap_change_mev_atom"] > 0.0
    fp32_tracked = run_nve(start, GAQCalculator(model, quantized_energy=True),
                           MDSettings(steps=10, log_every=5)).summary()
    assert fp32_tracked["max_abs_gap_change_mev_atom"] == 0.0
    assert fp32_tracked["quantized_energy_drift_mev_atom_ps"] == pytest.approx(
        fp32_tracked["drift_mev_atom_ps"], abs=1e-12)


def test_energy_scatter_is_the_spread_about_the_fitted_line():
    t = np.linspace(0.0, 1.0, 101)
    line = -100.0 + 0.5 * t  # eV
    jitter = 0.01 * np.where(np.arange(101) % 2, 1.0, -1.0)  # +-10 meV
    assert energy_scatter(t, line, 10) == pytest.approx(0.0, abs=1e-9)
    assert energy_scatter(t, line + jitter, 10) == pytest.approx(1.0, rel=0.02)  # 10 meV / 10 atoms
    assert energy_scatter(t[:2], line[:2], 10) is None
