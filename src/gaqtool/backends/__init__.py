"""Model backends: one module per family of pretrained potentials.

A backend turns a user's source (a checkpoint file or a name such as ``sevenn:7net-0``) into a
potential that follows ``gaqtool.potential`` (energies of a ``Batch``; forces and stress come
from autograd, the same for every backend), rebuilds that potential from the JSON config a
quantized file stores, and declares module roles through the potential's ``module_roles()``.
It may register quantization handlers for module kinds of its own
(``gaqtool.quant.apply.register_handler``) when its module is imported.

Adding an architecture means adding a file here and one line to :data:`BACKEND_MODULES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gaqtool.errors import ModelLoadError

__all__ = ["Backend", "LoadedSource", "BACKEND_MODULES", "get_backend", "backend_for_config",
           "backend_for_name", "backend_for_payload", "safe_globals"]

# backend name -> module implementing it (imported on first use; optional dependencies inside)
BACKEND_MODULES: dict[str, str] = {
    "gaqtool": "gaqtool.backends.reference",
    "sevenn": "gaqtool.backends.sevenn",
}


@dataclass
class LoadedSource:
    """A potential built from a user's source.

    model: the potential in eval mode; path: the file it came from (its size is the FP32
    reference of the report); name: short name for tables; molecule: a default rMD17 molecule
    for data, if the model was fitted to one; info: backend metadata for reports.
    """

    model: torch.nn.Module
    path: Path
    name: str
    molecule: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Backend:
    """Interface of a model backend. Subclasses set ``name`` and ``architectures``."""

    name: str = ""
    architectures: tuple[str, ...] = ()  # values of config["architecture"] it rebuilds
    name_hint: str = ""  # shown when a '<backend>:' source names no model

    def safe_globals(self) -> list:
        """Extra classes/functions ``torch.load(weights_only=True)`` may construct for this
        backend's checkpoints (an explicit allowlist, never a blanket pickle)."""
        return []

    def recognises(self, payload: Any) -> bool:
        """Whether a checkpoint dict (already read safely) is one of this backend's."""
        return False

    def from_payload(self, payload: dict, path: Path, modal: str | None = None,
                     e3nn_convolution: bool = False) -> LoadedSource:
        """A potential from a checkpoint dict read from ``path``. ``e3nn_convolution``: keep
        e3nn's tensor products where the backend would switch in gaqtool's fused kernels."""
        raise NotImplementedError

    def from_name(self, name: str, modal: str | None = None, e3nn_convolution: bool = False
                  ) -> LoadedSource:
        """A potential from a name this backend ships (``<backend>:<name>``)."""
        raise ModelLoadError(f"backend '{self.name}' has no named models",
                             hint="pass a checkpoint file instead")

    def build(self, config: dict, e3nn_convolution: bool = False) -> torch.nn.Module:
        """Rebuild an (untrained) potential from the JSON config a quantized file stores; the
        caller loads the tensors. ``e3nn_convolution`` as in :meth:`from_payload`."""
        raise NotImplementedError


_LOADED: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (imports its module; clear error if its package is missing)."""
    if name not in BACKEND_MODULES:
        raise ModelLoadError(f"unknown model backend '{name}'",
                             hint="known backends: " + ", ".join(BACKEND_MODULES))
    if name not in _LOADED:
        module = importlib.import_module(BACKEND_MODULES[name])
        _LOADED[name] = module.BACKEND
    return _LOADED[name]


def backend_for_config(config: dict) -> Backend:
    """The backend that rebuilds a stored model config (by its ``architecture``)."""
    architecture = config.get("architecture")
    for name in BACKEND_MODULES:
        backend = get_backend(name)
        if architecture in backend.architectures:
            return backend
    raise ModelLoadError(f"unknown model architecture {architecture!r}",
                         hint="the file was written by a gaqtool with a backend this one lacks")


def backend_for_name(source: str) -> tuple[Backend, str] | None:
    """(backend, model name) for a ``<backend>:<name>`` source, or None for anything else."""
    prefix, sep, rest = source.partition(":")
    if not sep or prefix not in BACKEND_MODULES or prefix == "gaqtool":
        return None
    if not rest:
        raise ModelLoadError(f"no model name after '{prefix}:'", hint=get_backend(prefix).name_hint or None)
    return get_backend(prefix), rest


def safe_globals() -> list:
    """The union of every backend's allowlist for ``torch.load(weights_only=True)``."""
    return [g for name in BACKEND_MODULES for g in get_backend(name).safe_globals()]


def backend_for_payload(payload: Any) -> Backend | None:
    """The first backend that recognises a checkpoint dict, or None."""
    return next((get_backend(n) for n in BACKEND_MODULES if get_backend(n).recognises(payload)), None)
