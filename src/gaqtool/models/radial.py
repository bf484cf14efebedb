"""Radial basis of edge lengths: Bessel functions times a smooth polynomial cutoff envelope."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["BesselBasis", "polynomial_envelope"]


def polynomial_envelope(distance: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """Smooth cutoff (DimeNet): 1 at r=0, 0 with p-1 vanishing derivatives at r=cutoff.

    distance: (E,) Angstrom -> (E,) dimensionless, 0 beyond the cutoff.
    """
    x = distance / cutoff
    env = (1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1)
           - p * (p + 1) / 2 * x ** (p + 2))
    return env * (x < 1.0)


class BesselBasis(nn.Module):
    """sqrt(2/c) sin(n pi r / c) / r for n = 1..num_basis: (E,) Angstrom -> (E, num_basis)."""

    def __init__(self, cutoff: float, num_basis: int) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.register_buffer("frequencies", math.pi / cutoff * torch.arange(1, num_basis + 1))

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        d = distance.unsqueeze(-1)
        return math.sqrt(2.0 / self.cutoff) * torch.sin(self.frequencies * d) / d
