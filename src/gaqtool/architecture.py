"""Default hyper-parameters of the reference potential (no torch here: ``gaqtool train --help``
shows them)."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_CONFIG"]

DEFAULT_CONFIG: dict[str, Any] = {
    "architecture": "equivariant_attention_potential",
    "species": [1, 6, 7, 8],
    "num_channels": 32,
    "lmax": 2,
    "num_layers": 3,
    "cutoff": 5.0,
    "num_basis": 8,
    "radial_hidden": 64,
    "num_heads": 4,
    "key_dim": 16,
    "attention": "cosine",
    "energy_scale": 1.0,
    "energy_shift": {},
}
