"""NVE molecular dynamics (ASE velocity Verlet) to test energy conservation of a model.

A quantized potential whose forces are not the gradient of its energy, or that is rough, shows
up as a drift of the total energy E_total = E_pot + E_kin. Several models can be run from the
same start (positions and seeded Maxwell-Boltzmann velocities) and compared.

The energy tracked is the calculator's ``energy``, the potential whose negative gradient the
forces are (for an activation-quantized file in force mode 'conservative': E_s, activation
rounding off), so its drift measures energy conservation. E_q, the activation-quantized energy
as ``eval`` measures it, is an optional diagnostic (``GAQCalculator(quantized_energy=True)``):
how far E_q - E drifts along the trajectory.

Periodic cells (crystals) run at fixed cell (NVE, no barostat); positions are not wrapped
back into the cell, so displacements stay readable.

Units: energies eV (reported per atom in meV), time fs/ps, temperature K, lengths Angstrom.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md import velocitydistribution
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet

from gaqtool.io.atomic import atomic_write

__all__ = ["MDSettings", "MDResult", "initial_state", "blowup_reason", "energy_drift",
           "energy_scatter", "run_nve",
           "write_trajectory"]


@dataclass(frozen=True)
class MDSettings:
    """NVE run settings.

    temperature_k: Maxwell-Boltzmann start temperature (K); timestep_fs: velocity-Verlet step;
    log_every: steps between stored snapshots / series points; blowup_distance: Angstrom from
    the centroid (molecules) or from the atom's start position (periodic cells, where atoms
    sit anywhere in the cell); blowup_temperature_factor: stop when
    T > factor * max(T_start, temperature_k).
    """

    temperature_k: float = 300.0
    timestep_fs: float = 0.5
    steps: int = 2000
    log_every: int = 10
    seed: int = 0
    blowup_distance: float = 10.0
    blowup_temperature_factor: float = 10.0


@dataclass
class MDResult:
    """One trajectory. Arrays have one entry per step run (step 0 included).

    time_ps, potential_energy (the calculator's ``energy``) / kinetic_energy (eV), temperature
    (K): (S + 1,) float64. quantized_potential_energy: E_q (eV) per step when the calculator
    reports ``quantized_energy``, else None.
    snapshots: Atoms every ``log_every`` steps (and the last one) with energy and forces attached.
    """

    num_atoms: int
    settings: MDSettings
    time_ps: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    temperature: np.ndarray
    quantized_potential_energy: np.ndarray | None = None
    blowup: str | None = None
    snapshots: list[Atoms] = field(default_factory=list)
    interrupted: bool = False  # stopped by Ctrl-C: the arrays hold the steps done until then

    @property
    def total_energy(self) -> np.ndarray:
        """Potential + kinetic energy (eV): constant up to integrator error for conservative
        forces."""
        return self.potential_energy + self.kinetic_energy

    @property
    def steps_done(self) -> int:
        return len(self.time_ps) - 1

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers of E_total = E_pot + E_kin: drift (meV/atom/ps, slope of a linear
        fit), max |E_total - E_total(0)| and the standard deviation about the fit (meV/atom);
        with E_q also the drift of E_q + E_kin and how far E_q - E_pot moves from its start
        value (max, meV/atom); temperatures (K); blow-up."""
        finite = np.isfinite(self.total_energy)
        per_atom = 1000.0 / self.num_atoms
        t, total = self.time_ps[finite], self.total_energy[finite]
        deviation = np.abs(total - total[0]) * per_atom if total.size else total
        summary = {
            "steps_requested": self.settings.steps, "steps_done": self.steps_done,
            "simulated_ps": float(self.time_ps[-1]),
            "drift_mev_atom_ps": energy_drift(t, total, self.num_atoms),
            "max_abs_energy_deviation_mev_atom": float(deviation.max()) if deviation.size else None,
            "energy_std_about_fit_mev_atom": energy_scatter(t, total, self.num_atoms),
            "temperature_start_k": float(self.temperature[0]),
            "temperature_mean_k": float(np.nanmean(self.temperature)),
            "temperature_final_k": float(self.temperature[-1]),
            "blew_up": self.blowup is not None, "blowup_reason": self.blowup,
        }
        if self.quantized_potential_energy is not None:
            quantized_total = (self.quantized_potential_energy + self.kinetic_energy)[finite]
            gap = quantized_total - total
            gap = np.abs(gap - gap[0]) * per_atom if gap.size else gap
            summary["quantized_energy_drift_mev_atom_ps"] = energy_drift(t, quantized_total, self.num_atoms)
            summary["max_abs_gap_change_mev_atom"] = float(gap.max()) if gap.size else None
        return summary

    def series(self) -> dict[str, list[float]]:
        """Every ``log_every``-th point: time_ps, total / potential energy (eV), temperature
        (K), and the quantized potential energy (eV) when tracked."""
        idx = list(range(0, len(self.time_ps), self.settings.log_every))
        if idx[-1] != len(self.time_ps) - 1:
            idx.append(len(self.time_ps) - 1)
        series = {"time_ps": self.time_ps[idx].tolist(), "total_energy_ev": self.total_energy[idx].tolist(),
                  "potential_energy_ev": self.potential_energy[idx].tolist(),
                  "temperature_k": self.temperature[idx].tolist()}
        if self.quantized_potential_energy is not None:
            series["quantized_potential_energy_ev"] = self.quantized_potential_energy[idx].tolist()
        return series


def initial_state(numbers: np.ndarray, positions: np.ndarray, temperature_k: float, seed: int,
                  cell: np.ndarray | None = None, pbc: np.ndarray | None = None) -> Atoms:
    """Atoms (N,) / (N, 3) Angstrom with seeded Maxwell-Boltzmann velocities at ``temperature_k``,
    zero total momentum and, for a molecule, zero angular momentum (temperature preserved).

    cell (3, 3) lattice vectors as rows and pbc (3,) bool make a periodic structure; its
    angular momentum is left alone (a rotation of an infinite crystal is no free mode)."""
    atoms = Atoms(numbers=np.asarray(numbers), positions=np.asarray(positions, dtype=np.float64),
                  cell=None if cell is None else np.asarray(cell, dtype=np.float64),
                  pbc=False if pbc is None else np.asarray(pbc, dtype=bool))
    rng = np.random.default_rng(seed)
    if hasattr(velocitydistribution, "thermalize_momenta"):  # ASE >= 3.29 (same distribution)
        velocitydistribution.thermalize_momenta(atoms, temperature_k, rng=rng)
    else:
        velocitydistribution.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_k, rng=rng)
    Stationary(atoms)
    if not np.any(atoms.pbc):
        ZeroRotation(atoms)
    return atoms


def blowup_reason(atoms: Atoms, energy: float, forces: np.ndarray, max_distance: float,
                  max_temperature: float | None, start_positions: np.ndarray | None = None) -> str | None:
    """Why the trajectory is considered blown up, or None (NaN, atom escaped, too hot).

    Escaped: farther than ``max_distance`` from the centroid for a molecule; for a periodic
    structure (where the centroid says nothing), moved farther than that from its position in
    ``start_positions`` (not checked without them)."""
    if not np.isfinite(energy) or not np.all(np.isfinite(forces)):
        return "NaN/inf energy or forces"
    positions = atoms.positions
    if not np.all(np.isfinite(positions)):
        return "NaN/inf positions"
    if np.any(atoms.pbc):
        if start_positions is not None:
            distance = np.linalg.norm(positions - start_positions, axis=1).max()
            if distance > max_distance:
                return f"an atom moved {distance:.1f} A from its start (> {max_distance:g} A)"
    else:
        distance = np.linalg.norm(positions - positions.mean(0), axis=1).max()
        if distance > max_distance:
            return f"an atom is {distance:.1f} A from the centroid (> {max_distance:g} A)"
    temperature = atoms.get_temperature()
    if max_temperature is not None and temperature > max_temperature:
        return f"temperature {temperature:.0f} K > {max_temperature:.0f} K"
    return None


def energy_drift(time_ps: np.ndarray, total_energy: np.ndarray, num_atoms: int) -> float | None:
    """Slope of a least-squares line through E_total(t): meV/atom/ps (None for < 2 points)."""
    if len(time_ps) < 2:
        return None
    slope_ev_ps = np.polyfit(np.asarray(time_ps, dtype=np.float64),
                             np.asarray(total_energy, dtype=np.float64) - total_energy[0], 1)[0]
    return float(slope_ev_ps * 1000.0 / num_atoms)


def energy_scatter(time_ps: np.ndarray, total_energy: np.ndarray, num_atoms: int) -> float | None:
    """Standard deviation of E_total(t) about its least-squares line: meV/atom (None for < 3
    points). The jitter that a drift slope alone does not show."""
    if len(time_ps) < 3:
        return None
    t = np.asarray(time_ps, dtype=np.float64)
    e = np.asarray(total_energy, dtype=np.float64) - total_energy[0]
    residual = e - np.polyval(np.polyfit(t, e, 1), t)
    return float(residual.std() * 1000.0 / num_atoms)


def _snapshot(atoms: Atoms, energy: float, forces: np.ndarray, stress: np.ndarray | None = None) -> Atoms:
    copy = atoms.copy()
    extra = {} if stress is None else {"stress": np.array(stress)}
    copy.calc = SinglePointCalculator(copy, energy=energy, free_energy=energy, forces=forces.copy(), **extra)
    return copy


def run_nve(start: Atoms, calculator: Calculator, settings: MDSettings,
            on_step: Callable[[int], None] | None = None) -> MDResult:
    """Velocity-Verlet NVE from ``start`` (positions and velocities are copied, not modified);
    a periodic ``start`` keeps its cell.

    Stops early when :func:`blowup_reason` fires, or at Ctrl-C (``interrupted``: the result
    holds the steps done). ``on_step(1)`` after every step.
    """
    atoms = start.copy()
    start_positions = atoms.positions.copy()
    atoms.calc = calculator
    dyn = VelocityVerlet(atoms, timestep=settings.timestep_fs * units.fs, logfile=None)
    series: dict[str, list[float]] = {"t": [], "pot": [], "quantized": [], "kin": [], "temp": []}
    snapshots: list[Atoms] = []
    max_temperature = settings.blowup_temperature_factor * max(settings.temperature_k, atoms.get_temperature())
    reason = None
    interrupted = False
    try:
        for step in range(settings.steps + 1):
            if step:
                dyn.run(1)
            energy, forces = atoms.get_potential_energy(), atoms.get_forces()
            series["t"].append(step * settings.timestep_fs / 1000.0)
            series["pot"].append(energy)
            if "quantized_energy" in atoms.calc.results:
                series["quantized"].append(float(atoms.calc.results["quantized_energy"]))
            series["kin"].append(atoms.get_kinetic_energy())
            series["temp"].append(atoms.get_temperature())
            reason = blowup_reason(atoms, energy, forces, settings.blowup_distance, max_temperature or None,
                                   start_positions)
            if step % settings.log_every == 0 or step == settings.steps or reason:
                stress = atoms.get_stress() if atoms.pbc.any() else None  # logged steps only
                snapshots.append(_snapshot(atoms, energy, forces, stress))
            if reason:
                reason = f"step {step}: {reason}"
                break
            if on_step and step:
                on_step(1)
    except KeyboardInterrupt:  # keep the steps done; the caller reports them
        interrupted = True
        done = min(len(series[key]) for key in ("t", "pot", "kin", "temp"))
        for values in series.values():
            del values[done:]
    quantized = np.array(series["quantized"]) if series["quantized"] and len(series["quantized"]) == len(series["t"]) else None
    return MDResult(len(atoms), settings, np.array(series["t"]), np.array(series["pot"]),
                    np.array(series["kin"]), np.array(series["temp"]), quantized, reason, snapshots,
                    interrupted)


def write_trajectory(path: Path | str, snapshots: list[Atoms]) -> Path:
    """Write ``snapshots`` (with their energies/forces) as an ASE .traj file, atomically."""
    from ase.io.trajectory import Trajectory

    def write(tmp: Path) -> None:
        with Trajectory(str(tmp), "w") as trajectory:
            for atoms in snapshots:
                trajectory.write(atoms)

    return atomic_write(path, write)
