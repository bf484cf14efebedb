"""FP32 checkpoints: a plain dict saved with ``torch.save`` that loads with ``weights_only=True``.

Layout (format 1): ``{"gaqtool_checkpoint": 1, "model_config": dict, "state_dict": dict,
"training": dict, "test_metrics": dict}``. Only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from gaqtool.errors import ModelLoadError
from gaqtool.io.atomic import atomic_write
from gaqtool.models.potential import build_model

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "read_checkpoint", "load_checkpoint_model",
           "default_model_path"]

CHECKPOINT_FORMAT = 1


def default_model_path() -> Path:
    """The embedded pretrained FP32 aspirin model shipped with the package."""
    from importlib import resources

    return Path(str(resources.files("gaqtool") / "data_files" / "aspirin_fp32.pt"))


def save_checkpoint(path: Path | str, model: torch.nn.Module, training: dict[str, Any],
                    test_metrics: dict[str, Any] | None = None) -> Path:
    """Write an FP32 checkpoint atomically."""
    payload = {
        "gaqtool_checkpoint": CHECKPOINT_FORMAT,
        "model_config": model.config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "training": training,
        "test_metrics": test_metrics or {},
    }

    def write(tmp: Path) -> None:
        torch.save(payload, tmp)
        torch.load(tmp, weights_only=True)  # refuse to write what a safe reader cannot load

    return atomic_write(path, write)


def read_checkpoint(path: Path | str, trust_pickle: bool = False) -> dict[str, Any]:
    """Read a checkpoint dict. Pickled Python objects are refused unless ``trust_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", hint="check the path")
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise ModelLoadError(f"cannot read {path}: not a PyTorch checkpoint",
                             hint="pass a .pt file written by `gaqtool train`, or a quantized .safetensors file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(
            f"{path} holds pickled Python objects, which are not loaded by default: "
            f"{str(exc).splitlines()[0][:160]}",
            hint="only if you trust the file's origin, pass --trust-pickle") from None
    except Exception as exc:  # zip errors, truncated files, wrong format
        raise ModelLoadError(f"cannot read {path} as a PyTorch checkpoint: {exc}",
                             hint="gaqtool reads checkpoints written by `gaqtool train`; "
                                  "quantized .safetensors files go to eval/lee-check directly") from None
    if not isinstance(payload, dict) or "model_config" not in payload or "state_dict" not in payload:
        raise ModelLoadError(f"{path} is not a gaqtool checkpoint (no model_config/state_dict)",
                             hint="train one with `gaqtool train` or export config + state dict")
    version = payload.get("gaqtool_checkpoint")
    if version != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: checkpoint format {version!r} is not supported "
                             f"(this gaqtool reads {CHECKPOINT_FORMAT})")
    return payload


def load_checkpoint_model(path: Path | str, trust_pickle: bool = False):
    """(model in eval mode, checkpoint dict) for an FP32 checkpoint."""
    payload = read_checkpoint(path, trust_pickle)
    try:
        model = build_model(payload["model_config"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ModelLoadError(f"cannot rebuild the model in {path}: {str(exc).splitlines()[0]}") from None
    return model.eval(), payload
