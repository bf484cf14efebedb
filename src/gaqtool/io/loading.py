"""Load any model source: the embedded default, a backend's named model or checkpoint, or a
quantized safetensors file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gaqtool.config import ForceMode
from gaqtool.errors import ModelLoadError
from gaqtool.io.checkpoint import default_model_path
from gaqtool.io.safetensors_io import load_quantized

__all__ = ["LoadedModel", "load_model", "load", "file_sha256"]


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class LoadedModel:
    """A model ready to run, with where it came from.

    kind: 'fp32' or 'quantized'; label: short name for tables; molecule: from its metadata.
    """

    model: torch.nn.Module
    path: Path
    kind: str
    label: str
    molecule: str | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def calibration_elements(self) -> list[str] | None:
        """Chemical symbols of a quantized file's calibration structures, where its report
        records them (files since 0.3.1); None otherwise."""
        if self.kind != "quantized":
            return None
        return (self.info.get("report") or {}).get("calibration", {}).get("elements")


def load_model(path: Path | str | None = None, trust_pickle: bool = False,
               force_mode: ForceMode | str | None = None, modal: str | None = None,
               e3nn_convolution: bool = False) -> LoadedModel:
    """Load a model source: None (the embedded aspirin model), a named model of a backend
    (``sevenn:7net-0``), a quantized ``.safetensors`` file, or any checkpoint a backend
    recognises (gaqtool ``.pt``, SevenNet ``.pth``).

    ``force_mode`` overrides the force mode stored in a quantized file (None: the file's own);
    it matters only for activation-quantized models, whose label then names it. ``modal``
    picks the fidelity of a multi-fidelity model (e.g. SevenNet-MF-0); a quantized file
    remembers the one it was made with. ``e3nn_convolution`` keeps e3nn's tensor products
    where a backend would switch in gaqtool's fused convolution kernel (SevenNet).
    """
    from gaqtool.backends import backend_for_name, backend_for_payload
    from gaqtool.io.checkpoint import read_payload
    from gaqtool.quant.apply import set_force_mode

    named = backend_for_name(str(path)) if path is not None and not Path(path).exists() else None
    if named is not None:
        backend, name = named
        source = backend.from_name(name, modal, e3nn_convolution)
        return LoadedModel(source.model, source.path, "fp32", "fp32", source.molecule,
                           {**source.info, "source": str(path)})
    path = Path(path) if path is not None else default_model_path()
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file",
                             hint="pass a checkpoint file (.pt/.pth), a quantized .safetensors file "
                                  "or a named model such as sevenn:7net-0")
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}",
                             hint="check the path (named models look like sevenn:7net-0)")
    if path.suffix == ".safetensors":
        if modal is not None:
            raise ModelLoadError("--modal applies to FP32 sources; a quantized file keeps the "
                                 "fidelity it was made with", hint="leave out --modal")
        model = load_quantized(path, e3nn_convolution)
        meta = model.file_metadata
        config = meta.quant_config
        label = f"{config.method.value} {config.bits_label}"
        if config.quantizes_activations:
            mode = ForceMode(force_mode) if force_mode is not None else config.force_mode
            set_force_mode(model, mode)
            label += f", {mode.value} forces"
        return LoadedModel(model, path, "quantized", label, model.config.get("molecule"),
                           {"report": meta.report, "plan": meta.plan,
                            "source_sha256": meta.raw_metadata.get("gaqtool.source_sha256"),
                            "source": meta.report.get("source", {}).get("name", path.name)})
    payload = read_payload(path, trust_pickle)
    backend = backend_for_payload(payload)
    if backend is None:
        raise ModelLoadError(f"{path} is a PyTorch file but no gaqtool backend knows its layout",
                             hint="gaqtool reads gaqtool checkpoints and SevenNet checkpoints "
                                  "(install gaqtool[sevenn])")
    source = backend.from_payload(payload, path, modal, e3nn_convolution)
    return LoadedModel(source.model, path, "fp32", "fp32", source.molecule,
                       {**source.info, "source": path.name})


def load(path: Path | str | None = None, trust_pickle: bool = False, modal: str | None = None,
         e3nn_convolution: bool = False) -> torch.nn.Module:
    """``gaqtool.load(source)``: a runnable model (embedded default, named model, FP32
    checkpoint or quantized file), eval mode; ``e3nn_convolution`` as in :func:`load_model`."""
    return load_model(path, trust_pickle, modal=modal, e3nn_convolution=e3nn_convolution).model
