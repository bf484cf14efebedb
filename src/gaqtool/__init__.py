"""gaqtool: Geometric-Aware post-training quantization of SO(3)-equivariant interatomic potentials.

Public API: ``load(path)`` (FP32 checkpoint or quantized safetensors file -> runnable model),
``quantize_model(model, QuantConfig)`` (module swapping, in place), ``QuantConfig``.
"""

from __future__ import annotations

__version__ = "0.3.0"

import gaqtool.backends.reference  # noqa: E402,F401  (registers its quantization handler)
from gaqtool.config import QuantConfig  # noqa: E402
from gaqtool.io.loading import load  # noqa: E402
from gaqtool.quant.apply import quantize_model  # noqa: E402

__all__ = ["__version__", "QuantConfig", "load", "quantize_model"]
