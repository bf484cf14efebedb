"""The reference equivariant attention potential (gaqtool's own backend)."""

from gaqtool.models.potential import EquivariantAttentionPotential, build_model

__all__ = ["EquivariantAttentionPotential", "build_model"]
