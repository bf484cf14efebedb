"""gaqtool: Geometric-Aware post-training quantization of SO(3)-equivariant interatomic potentials.

Public API: ``load(path)`` (FP32 checkpoint or quantized safetensors file -> runnable model),
``quantize_model(model, QuantConfig)`` (module swapping, in place), ``QuantConfig``.

The names are imported on first use, so that ``import gaqtool`` (and the command line's
``--help``) does not pay for torch and e3nn.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.3.1"

_PUBLIC = {"QuantConfig": "gaqtool.config", "load": "gaqtool.io.loading",
           "quantize_model": "gaqtool.quant.apply"}

__all__ = ["__version__", "QuantConfig", "load", "quantize_model"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'gaqtool' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value
