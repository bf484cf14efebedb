"""gaqtool: Geometric-Aware post-training quantization of SO(3)-equivariant interatomic potentials."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
