"""Models: the reference equivariant attention potential and helpers to run any model."""

from gaqtool.models.potential import EquivariantAttentionPotential, build_model, energy_and_forces

__all__ = ["EquivariantAttentionPotential", "build_model", "energy_and_forces"]
