"""Backend of SevenNet potentials (the ``sevenn`` package, GPL-3.0: an optional import; no code
of it is copied here).

Sources: the pretrained models shipped inside the sevenn wheel (``sevenn:7net-0``,
``sevenn:7net-0_22may2024``, ``sevenn:7net-mf-0`` with ``--modal``, ``sevenn:7net-l3i5``) or
any SevenNet checkpoint file. Checkpoints are pickles whose config holds numpy arrays; they are
read with ``torch.load(weights_only=True)`` and the allowlist of :meth:`safe_globals`.

The model is sevenn's own ``AtomGraphSequential``, built by sevenn's builder from the
checkpoint config and run module by module on a dict made from gaqtool's ``Batch``: gaqtool
supplies the edge vectors (periodic images included) and skips sevenn's force/stress output
module, so that forces and stress come from gaqtool's shared autograd path
(``gaqtool.potential``) and calibration and GPTQ can run the energy alone, without gradients.
"""

from __future__ import annotations

import copy
import functools
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gaqtool.backends import Backend, LoadedSource
from gaqtool.data.graph import Batch
from gaqtool.errors import InputError, ModelLoadError
from gaqtool.potential import check_species

__all__ = ["SevenNetBackend", "SevenNetPotential", "BACKEND", "PRETRAINED"]

ARCHITECTURE = "sevenn"
INSTALL_HINT = 'install the SevenNet backend: pip install "gaqtool[sevenn]"'

# gaqtool name -> (sevenn._const attribute of the checkpoint path, display name); the models
# whose weights ship inside the sevenn wheel (others would be downloaded: not done here)
PRETRAINED: dict[str, tuple[str, str]] = {
    "7net-0": ("SEVENNET_0_11Jul2024", "SevenNet-0"),
    "7net-0_11jul2024": ("SEVENNET_0_11Jul2024", "SevenNet-0"),
    "7net-0_22may2024": ("SEVENNET_0_22May2024", "SevenNet-0 (22May2024)"),
    "7net-mf-0": ("SEVENNET_MF_0", "SevenNet-MF-0"),
    "7net-l3i5": ("SEVENNET_l3i5", "SevenNet-l3i5"),
}

# sevenn modules gaqtool replaces by its own shared path (edge vectors in, autograd out)
_SKIPPED_MODULES = ("EdgePreprocess", "ForceOutput", "ForceStressOutput", "ForceStressOutputFromEdge")


@functools.lru_cache(maxsize=None)
def _sevenn():
    """Import sevenn's builder pieces once, or raise a one-line install hint."""
    try:
        import sevenn._const as const
        import sevenn._keys as keys
        import sevenn.scripts.backward_compatibility as compat
        from sevenn.checkpoint import _config_cp_routine
        from sevenn.model_build import build_E3_equivariant_model
    except ImportError as exc:
        raise ModelLoadError(f"the SevenNet backend needs the sevenn package ({exc.name} not found)",
                             hint=INSTALL_HINT) from None
    return const, keys, compat, _config_cp_routine, build_E3_equivariant_model


def _to_json(value: Any) -> Any:
    """A sevenn config value as JSON data: arrays -> lists, devices -> 'cpu', and dicts with
    integer keys (the type map) -> {"__int_keys__": [[key, value], ...]}."""
    if isinstance(value, dict):
        if value and all(isinstance(k, (int, np.integer)) for k in value):
            return {"__int_keys__": [[int(k), _to_json(v)] for k, v in sorted(value.items())]}
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _to_json(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return "cpu"
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _from_json(value: Any) -> Any:
    """Inverse of :func:`_to_json` for what the builder reads."""
    if isinstance(value, dict):
        if set(value) == {"__int_keys__"}:
            return {int(k): _from_json(v) for k, v in value["__int_keys__"]}
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


class SevenNetPotential(nn.Module):
    """A SevenNet model behind the ``gaqtool.potential`` protocol.

    net:    sevenn's ``AtomGraphSequential`` (its module paths appear as ``net.<name>``)
    config: {"architecture": "sevenn", "sevenn_config": resolved sevenn config (JSON),
             "modal": fidelity or None, "energy_offset": eV/atom added by gaqtool,
             "name": display name}
    forward(batch) -> (M,) float64 total energies, eV.
    """

    def __init__(self, net: nn.Module, config: dict[str, Any]):
        super().__init__()
        self.net = net
        self.config = copy.deepcopy(config)
        sevenn_config = self.config["sevenn_config"]
        self.cutoff = float(sevenn_config["cutoff"])
        type_map = _from_json(sevenn_config["_type_map"])
        self._species = sorted(int(z) for z in type_map)
        table = torch.full((max(self._species) + 1,), -1, dtype=torch.long)
        for z, index in type_map.items():
            table[int(z)] = int(index)
        self.register_buffer("type_index", table, persistent=False)
        modal_map = sevenn_config.get("_modal_map") or {}
        modal = self.config.get("modal")
        self.modal_index = int(modal_map[modal]) if modal is not None else None
        self._steps = [(name, module) for name, module in net._modules.items()
                       if type(module).__name__ not in _SKIPPED_MODULES]
        self.register_buffer("energy_offset", torch.tensor(float(self.config.get("energy_offset", 0.0)),
                                                           dtype=torch.float64), persistent=False)

    @property
    def species(self) -> list[int]:
        return list(self._species)

    def add_energy_offset(self, ev_per_atom: float) -> None:
        self.energy_offset += ev_per_atom
        self.config["energy_offset"] = float(self.energy_offset)

    def module_roles(self) -> dict[str, str]:
        """Species embedding (o3.Linear on one-hot species), readout (the two linear layers
        from node features to atomic energies) and the radial networks of each convolution."""
        roles = {}
        for name, module in self.net._modules.items():
            if name == "onehot_to_feature_x":
                roles[f"net.{name}"] = "species_embedding"
            elif name.startswith("reduce_") and any(p.numel() for p in module.parameters()):
                roles[f"net.{name}"] = "readout"
            elif name.endswith("_convolution") and hasattr(module, "weight_nn"):
                roles[f"net.{name}.weight_nn"] = "radial"
        return roles

    def _inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """sevenn's data dict: edges as [receiver, sender] with the receiver-to-sender vectors."""
        _, keys, *_ = _sevenn()
        numbers = batch.numbers
        if int(numbers.max()) >= len(self.type_index) or bool((self.type_index[numbers] < 0).any()):
            check_species(numbers, self._species, self.config.get("name", "this SevenNet model"))
        data = {
            keys.EDGE_IDX: torch.stack([batch.edge_dst, batch.edge_src]),
            keys.EDGE_VEC: batch.edge_vectors(),
            keys.ATOMIC_NUMBERS: numbers,
            keys.NODE_FEATURE: self.type_index[numbers],
            keys.POS: batch.positions,
            keys.BATCH: batch.molecule_index,
            keys.NUM_ATOMS: batch.num_atoms_per_molecule,
        }
        if self.modal_index is not None:
            data[keys.MODAL_TYPE] = torch.full((batch.num_molecules,), self.modal_index,
                                               dtype=torch.int64, device=numbers.device)
        return data

    def forward(self, batch: Batch) -> torch.Tensor:
        _, keys, *_ = _sevenn()
        data = self._inputs(batch)
        dtype = data[keys.EDGE_VEC].dtype
        for _, module in self._steps:
            data = module(data)
            if dtype != torch.float32:  # sevenn makes its one-hot features float32: follow the model
                for key, value in data.items():
                    if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                        data[key] = value.to(dtype)
        energies = data[keys.PRED_TOTAL_ENERGY].reshape(-1).to(torch.float64)
        natoms = batch.num_atoms_per_molecule.to(torch.float64)
        return energies + self.energy_offset * natoms


class SevenNetBackend(Backend):
    name = "sevenn"
    architectures = (ARCHITECTURE,)
    name_hint = "name one of: " + ", ".join(f"sevenn:{n}" for n in PRETRAINED)

    def safe_globals(self) -> list:
        """numpy arrays, dtypes and the array-rebuilding function (numpy 2 moved
        ``numpy.core.multiarray`` to ``numpy._core``: the old name is allowlisted too)."""
        multiarray = getattr(np, "_core", None) or np.core
        allowed: list = [np.ndarray, np.dtype,
                         (multiarray.multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                         multiarray.multiarray._reconstruct]
        dtypes = getattr(np, "dtypes", None)
        if dtypes is not None:
            allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
        return allowed

    def recognises(self, payload) -> bool:
        return (isinstance(payload, dict) and "model_state_dict" in payload
                and isinstance(payload.get("config"), dict)
                and "_type_map" in payload["config"] and "cutoff" in payload["config"])

    def from_name(self, name: str, modal: str | None = None, e3nn_convolution: bool = False
                  ) -> LoadedSource:
        const, *_ = _sevenn()
        key = name.lower().replace("sevennet", "7net")
        if key not in PRETRAINED:
            raise ModelLoadError(f"unknown SevenNet model '{name}'",
                                 hint="shipped with sevenn: " + ", ".join(f"sevenn:{n}" for n in PRETRAINED)
                                      + "; or pass a checkpoint path")
        attribute, display = PRETRAINED[key]
        path = Path(getattr(const, attribute))
        if not path.is_file():
            raise ModelLoadError(f"{display} is not in this sevenn installation ({path})",
                                 hint="reinstall sevenn, or pass the checkpoint path")
        from gaqtool.io.checkpoint import read_payload

        return self.from_payload(read_payload(path), path, modal, e3nn_convolution, display)

    def from_payload(self, payload: dict, path: Path, modal: str | None = None,
                     e3nn_convolution: bool = False, display: str | None = None) -> LoadedSource:
        _, keys, compat, config_routine, build = _sevenn()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sevenn_config = _to_json(config_routine(copy.deepcopy(payload["config"])))
        display = display or path.stem
        modal = self._check_modal(sevenn_config, modal, display)
        config = {"architecture": ARCHITECTURE, "sevenn_config": sevenn_config,
                  "modal": modal, "energy_offset": 0.0, "name": display}
        model = self.build(config, e3nn_convolution)
        try:
            state = compat.patch_state_dict_if_old(payload["model_state_dict"], payload["config"], model.net)
            model.net.load_state_dict(state, strict=True)
        except (RuntimeError, KeyError) as exc:
            raise ModelLoadError(f"cannot load the weights of {path}: {str(exc).splitlines()[0][:200]}") from None
        info = {"backend": self.name, "sevenn_version": str(payload["config"].get("version", "")),
                "modal": modal, "num_species": len(model.species)}
        return LoadedSource(model.eval(), path, display, None, info)

    @staticmethod
    def _check_modal(sevenn_config: dict, modal: str | None, display: str) -> str | None:
        available = list((sevenn_config.get("_modal_map") or {}).keys())
        if available and modal is None:
            raise InputError(f"{display} is a multi-fidelity model and needs --modal",
                             hint="choose one of: " + ", ".join(available))
        if modal is not None and not available:
            raise InputError(f"{display} has one fidelity; --modal '{modal}' does not apply",
                             hint="leave out --modal")
        if modal is not None and modal not in available:
            raise InputError(f"unknown --modal '{modal}' for {display}",
                             hint="choose one of: " + ", ".join(available))
        return modal

    def build(self, config: dict, e3nn_convolution: bool = False) -> nn.Module:
        """sevenn's model from the stored config; its convolutions use gaqtool's fused uvu kernel
        (``sevenn_convolution``) unless ``e3nn_convolution`` (sevenn's own e3nn path)."""
        *_, build = _sevenn()
        sevenn_config = _from_json(config["sevenn_config"])
        sevenn_config["device"] = "cpu"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = build(copy.deepcopy(sevenn_config))
        if net is None or not hasattr(net, "_modules"):
            raise ModelLoadError("sevenn's builder returned no model for this config")
        net.set_is_batch_data(True)
        if not e3nn_convolution:
            from gaqtool.backends.sevenn_convolution import use_fused_convolutions

            use_fused_convolutions(net)
        return SevenNetPotential(net, config)


BACKEND = SevenNetBackend()
