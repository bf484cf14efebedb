"""ASE calculator for gaqtool models (FP32 checkpoints and quantized safetensors files).

    >>> from gaqtool.ase import GAQCalculator                      # doctest: +SKIP
    >>> atoms.calc = GAQCalculator("quantized.safetensors")        # doctest: +SKIP
    >>> atoms.get_potential_energy(), atoms.get_forces()           # eV, (N, 3) eV/A  # doctest: +SKIP

Molecules and periodic cells (stress for cells with periodic boundaries). The neighbour list is
rebuilt on every call.
This module is ``gaqtool.ase``; the imports below are absolute, so ``ase`` is the ASE package.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from gaqtool.allocator import keep_freed_memory
from gaqtool.config import ForceMode
from gaqtool.data.graph import Batch, structures_batch
from gaqtool.data.spec import uncalibrated_elements
from gaqtool.io.loading import LoadedModel, load_model
from gaqtool.potential import check_species
from gaqtool.quant.apply import dynamics_prediction, set_force_mode
from gaqtool.threads import configure_threads

__all__ = ["GAQCalculator", "atoms_to_batch"]


def atoms_to_batch(atoms, cutoff: float, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Batch:
    """One ``ase.Atoms`` (molecule or periodic cell) as a Batch with its neighbour list."""
    return structures_batch([np.asarray(atoms.numbers)], [np.asarray(atoms.positions, dtype=np.float64)],
                            [np.asarray(atoms.cell[:], dtype=np.float64)], [np.asarray(atoms.pbc, dtype=bool)],
                            cutoff, dtype).to(device)


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of a model's first floating parameter (float32 if it has none): positions are
    given to the model in that precision."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


class GAQCalculator(Calculator):
    """Energy (eV), forces (eV/A, -dE/dx by autograd) and, for periodic cells, stress (eV/A^3,
    ASE's Voigt order and sign) from a gaqtool model of any backend.

    path_or_model: a model file (.pt FP32 checkpoint or quantized .safetensors), a
                   ``LoadedModel``, a model (``nn.Module`` with ``cutoff`` and ``config``), or
                   None for the embedded aspirin model.
    force_mode:    forces of an activation-quantized model (``gaqtool.config.ForceMode``):
                   'conservative' (default: -dE_s/dx with activation rounding off, so dynamics
                   conserve E_s + E_kin), 'ste' (straight through the rounding; drifts), or None
                   for the mode stored in the file. Applied to the model in place
                   (``set_force_mode``); FP32 and weight-only models are exact either way.
    quantized_energy: also put E_q (eV), the activation-quantized energy that ``gaqtool eval``
                   measures, in ``results['quantized_energy']`` (one extra forward pass per call
                   in force mode 'conservative'; off by default).
    ``energy`` is the potential whose negative gradient ``forces`` are, so NVE conserves
    ``energy`` + kinetic energy: for an activation-quantized file in force mode 'conservative'
    (the default) that is E_s, the model with activation rounding off (only in mode 'ste' is it
    E_q, with forces that are not its gradient). free_energy equals energy (no electronic
    temperature).
    threads:       torch CPU threads, set when the calculator is made (process-wide, as torch's
                   setting is); None: one per core that is free then (``gaqtool.threads``).
                   The calculator also keeps freed memory in the process for reuse across steps
                   (``gaqtool.allocator.keep_freed_memory``, process-wide).
    e3nn_convolution: for a model file, keep e3nn's tensor products instead of gaqtool's fused
                   convolution (SevenNet; see ``gaqtool.io.loading.load_model``).
    warn_uncalibrated: warn (once per message) when a structure holds elements that a quantized
                   file's calibration structures lacked (``gaqtool md`` says so itself and
                   turns this off).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, path_or_model: str | Path | LoadedModel | torch.nn.Module | None = None,
                 device: str = "cpu", trust_pickle: bool = False,
                 force_mode: ForceMode | str | None = ForceMode.CONSERVATIVE,
                 quantized_energy: bool = False, threads: int | None = None,
                 e3nn_convolution: bool = False, warn_uncalibrated: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.calibrated_elements: list[str] | None = None  # a quantized file's, where it records them
        self._uncalibrated_warned: set[str] = set()
        self.warn_uncalibrated = bool(warn_uncalibrated)
        self.threads = configure_threads(threads)
        keep_freed_memory()
        from_file = not isinstance(path_or_model, (torch.nn.Module, LoadedModel))
        if isinstance(path_or_model, torch.nn.Module):
            self.model = path_or_model
            self.model_name = type(path_or_model).__name__
        else:
            loaded = (load_model(path_or_model, trust_pickle, force_mode, e3nn_convolution=e3nn_convolution)
                      if from_file else path_or_model)
            self.model = loaded.model
            self.model_name = f"{loaded.path.name} ({loaded.label})"
            self.calibrated_elements = loaded.calibration_elements
        if force_mode is not None and not from_file:  # load_model has applied it to files
            set_force_mode(self.model, force_mode)
        self.quantized_energy = bool(quantized_energy)
        self.device = torch.device(device)
        self.model = self.model.to(self.device).eval()
        self.cutoff = float(self.model.cutoff)
        self.species = [int(z) for z in self.model.species]

    def check_atoms(self, atoms) -> None:
        """Raise ``UnknownElementError`` (a ValueError) for elements outside the model's species;
        warn (once per message) for elements a quantized file's calibration structures lacked."""
        check_species(atoms.numbers, self.species, self.model_name)
        gap = (uncalibrated_elements(self.calibrated_elements, [np.asarray(atoms.numbers)])
               if self.warn_uncalibrated else None)
        if gap and gap not in self._uncalibrated_warned:
            self._uncalibrated_warned.add(gap)
            warnings.warn(f"{self.model_name}: {gap}", UserWarning, stacklevel=3)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        self.check_atoms(self.atoms)
        batch = atoms_to_batch(self.atoms, self.cutoff, self.device, model_dtype(self.model))
        periodic = bool(np.any(self.atoms.pbc))
        want_stress = periodic and "stress" in properties  # a strain derivative costs time per MD step
        prediction, energies_q = dynamics_prediction(self.model, batch, stress=want_stress,
                                                     quantized_energy=self.quantized_energy)
        energy = float(prediction.energies.detach()[0].cpu())
        self.results = {"energy": energy, "free_energy": energy,
                        "forces": prediction.forces.detach().cpu().double().numpy()}
        if energies_q is not None:
            self.results["quantized_energy"] = float(energies_q[0].cpu())
        if want_stress:
            s = prediction.stress.detach()[0].cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
