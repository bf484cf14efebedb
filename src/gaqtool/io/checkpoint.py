"""FP32 checkpoints: gaqtool's own format, and the safe reader every backend's checkpoint goes
through.

gaqtool's format is a plain dict saved with ``torch.save`` that loads with ``weights_only=True``.

Layout (format 1): ``{"gaqtool_checkpoint": 1, "model_config": dict, "state_dict": dict,
"training": dict, "test_metrics": dict}``. Only tensors, numbers, strings, lists and dicts.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from gaqtool.errors import ModelLoadError
from gaqtool.io.atomic import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "read_payload", "check_checkpoint", "read_checkpoint",
           "load_checkpoint_model", "default_model_path"]

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


def _first_line(exc: Exception) -> str:
    """The first line of an exception's message, without terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    return (text.splitlines() or [type(exc).__name__])[0][:200]


def read_payload(path: Path | str, trust_pickle: bool = False) -> Any:
    """Read a PyTorch checkpoint file safely: ``torch.load(weights_only=True)`` with the model
    backends' explicit allowlists (e.g. the numpy arrays in SevenNet configs). Anything else a
    pickle asks to construct is refused unless ``trust_pickle``."""
    from gaqtool.backends import safe_globals

    path = Path(path)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a directory, not a model file",
                             hint="pass a checkpoint file (.pt/.pth) or a quantized .safetensors file")
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", hint="check the path")
    with open(path, "rb") as handle:
        head = handle.read(2)
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):
        raise ModelLoadError(f"cannot read {path}: not a PyTorch checkpoint",
                             hint="pass a .pt/.pth checkpoint, a quantized .safetensors file or "
                                  "a named model such as sevenn:7net-0")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", re.sub(r"\x1b\[[0-9;]*m", "", str(exc)))
        raise ModelLoadError(
            f"{path} holds pickled Python objects outside gaqtool's allowlist, which are not "
            f"loaded by default: {refused.group(1) if refused else _first_line(exc)}",
            hint="only if you trust the file's origin, pass --trust-pickle") from None
    except Exception as exc:  # zip errors, truncated files, wrong format
        raise ModelLoadError(f"cannot read {path} as a PyTorch checkpoint: {_first_line(exc)}",
                             hint="the file may be truncated or not a model checkpoint") from None


def check_checkpoint(payload: Any, path: Path | str) -> dict[str, Any]:
    """Validate a gaqtool checkpoint dict read from ``path``; return it."""
    if not isinstance(payload, dict) or "model_config" not in payload or "state_dict" not in payload:
        raise ModelLoadError(f"{path} is not a gaqtool checkpoint (no model_config/state_dict)",
                             hint="train one with `gaqtool train` or export config + state dict")
    version = payload.get("gaqtool_checkpoint")
    if version != CHECKPOINT_FORMAT:
        raise ModelLoadError(f"{path}: checkpoint format {version!r} is not supported "
                             f"(this gaqtool reads {CHECKPOINT_FORMAT})")
    return payload


def read_checkpoint(path: Path | str, trust_pickle: bool = False) -> dict[str, Any]:
    """Read and validate a gaqtool checkpoint dict."""
    return check_checkpoint(read_payload(path, trust_pickle), path)


def load_checkpoint_model(path: Path | str, trust_pickle: bool = False):
    """(reference model in eval mode, checkpoint dict) for a gaqtool FP32 checkpoint."""
    from gaqtool.backends import get_backend

    payload = read_checkpoint(path, trust_pickle)
    return get_backend("gaqtool").from_payload(payload, Path(path)).model, payload
