"""Load any gaqtool model file: an FP32 checkpoint (.pt) or a quantized safetensors file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gaqtool.config import ForceMode
from gaqtool.errors import ModelLoadError
from gaqtool.io.checkpoint import default_model_path, load_checkpoint_model
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


def load_model(path: Path | str | None = None, trust_pickle: bool = False,
               force_mode: ForceMode | str | None = None) -> LoadedModel:
    """Load ``path`` (None: the embedded aspirin model). Suffix .safetensors -> quantized.

    ``force_mode`` overrides the force mode stored in a quantized file (None: the file's own);
    it matters only for activation-quantized models, whose label then names it.
    """
    from gaqtool.quant.apply import set_force_mode

    path = Path(path) if path is not None else default_model_path()
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}", hint="check the path")
    if path.suffix == ".safetensors":
        model = load_quantized(path)
        meta = model.file_metadata
        config = meta.quant_config
        label = f"{config.method.value} {config.bits_label}"
        if config.quantizes_activations:
            mode = ForceMode(force_mode) if force_mode is not None else config.force_mode
            set_force_mode(model, mode)
            label += f", {mode.value} forces"
        return LoadedModel(model, path, "quantized", label, model.config.get("molecule"),
                           {"report": meta.report, "plan": meta.plan,
                            "source_sha256": meta.raw_metadata.get("gaqtool.source_sha256")})
    model, payload = load_checkpoint_model(path, trust_pickle)
    return LoadedModel(model, path, "fp32", "fp32", model.config.get("molecule"),
                       {"training": payload.get("training", {}), "test_metrics": payload.get("test_metrics", {})})


def load(path: Path | str | None = None, trust_pickle: bool = False) -> torch.nn.Module:
    """``gaqtool.load(path)``: a runnable model (FP32 checkpoint or quantized file), eval mode."""
    return load_model(path, trust_pickle).model
