"""The reference SO(3)-equivariant graph attention potential, rebuilt from a plain config dict.

E = sum_i (scale * e_i + shift[Z_i]); forces = -dE/dx by autograd. The network runs in float32;
the per-element shifts (large: aspirin is about -17600 eV) are added in float64 so that energy
differences of a few meV survive.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from e3nn import o3
from torch import nn

from gaqtool.data.graph import Batch
from gaqtool.models.layers import EquivariantAttentionLayer
from gaqtool.architecture import DEFAULT_CONFIG  # light module: the CLI reads it for --help
from gaqtool.models.radial import BesselBasis, polynomial_envelope

__all__ = ["DEFAULT_CONFIG", "EquivariantAttentionPotential", "build_model"]


class EquivariantAttentionPotential(nn.Module):
    """Equivariant attention potential; ``config`` holds every constructor argument.

    forward(batch) -> (M,) float64 energies in eV (the ``gaqtool.potential`` protocol).
    """

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = copy.deepcopy(config)
        c = self.config
        channels, lmax = int(c["num_channels"]), int(c["lmax"])
        self.cutoff = float(c["cutoff"])
        self.irreps_node = o3.Irreps([(channels, (l, (-1) ** l)) for l in range(lmax + 1)])
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.register_buffer("species_to_index", self._species_table(c["species"]), persistent=False)
        self.embedding = nn.Embedding(len(c["species"]), channels)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True,
                                                         normalization="component")
        self.basis = BesselBasis(self.cutoff, int(c["num_basis"]))
        self.layers = nn.ModuleList(
            EquivariantAttentionLayer(self.irreps_node, self.irreps_sh, int(c["num_basis"]),
                                      int(c["radial_hidden"]), int(c["num_heads"]),
                                      int(c["key_dim"]), c["attention"])
            for _ in range(int(c["num_layers"])))
        self.readout_hidden = nn.Linear(channels, channels)
        self.readout_out = nn.Linear(channels, 1)
        self.energy_scale = float(c["energy_scale"])
        shift = torch.zeros(len(c["species"]), dtype=torch.float64)
        for z, value in c["energy_shift"].items():
            shift[c["species"].index(int(z))] = float(value)
        self.register_buffer("energy_shift", shift, persistent=False)

    @staticmethod
    def _species_table(species: list[int]) -> torch.Tensor:
        table = torch.full((max(species) + 1,), -1, dtype=torch.long)
        table[torch.tensor(species)] = torch.arange(len(species))
        return table

    @property
    def species(self) -> list[int]:
        """Atomic numbers the model knows."""
        return [int(z) for z in self.config["species"]]

    def add_energy_offset(self, ev_per_atom: float) -> None:
        """Shift every element's energy by ``ev_per_atom`` (config too, so files rebuild it)."""
        self.energy_shift += ev_per_atom
        self.config["energy_shift"] = {str(z): float(v) for z, v in
                                       zip(self.config["species"], self.energy_shift.tolist())}

    def module_roles(self) -> dict[str, str]:
        """Module path -> role (``gaqtool.potential.ROLES``)."""
        roles = {"embedding": "species_embedding", "readout_hidden": "readout", "readout_out": "readout"}
        roles.update({f"layers.{i}.radial": "radial" for i in range(len(self.layers))})
        return roles

    def species_index(self, numbers: torch.Tensor) -> torch.Tensor:
        """(n,) atomic numbers -> (n,) indices into ``config['species']``; ValueError if unknown."""
        if int(numbers.max()) >= len(self.species_to_index) or bool((self.species_to_index[numbers] < 0).any()):
            unknown = sorted(set(numbers.tolist()) - set(self.config["species"]))
            raise ValueError(f"elements {unknown} are not in the model's species {self.config['species']}")
        return self.species_to_index[numbers]

    def atomic_energies(self, batch: Batch) -> torch.Tensor:
        """(n,) float32 network atomic energies (before scale and shift), eV."""
        species = self.species_index(batch.numbers)
        vectors = batch.edge_vectors()  # (E, 3)
        distance = vectors.norm(dim=-1)
        edge_sh = self.spherical_harmonics(vectors)
        edge_basis = self.basis(distance)
        envelope = polynomial_envelope(distance, self.cutoff)
        scalars = self.embedding(species)
        features = torch.cat([scalars, scalars.new_zeros(len(species), self.irreps_node.dim - scalars.shape[1])], -1)
        for layer in self.layers:
            features = layer(features, edge_sh, edge_basis, envelope, batch.edge_src, batch.edge_dst)
        scalars = features[:, :self.irreps_node.count("0e")]
        return self.readout_out(nn.functional.silu(self.readout_hidden(scalars))).squeeze(-1)

    def forward(self, batch: Batch) -> torch.Tensor:
        atomic = self.atomic_energies(batch).to(torch.float64) * self.energy_scale
        atomic = atomic + self.energy_shift[self.species_index(batch.numbers)]
        return torch.zeros(batch.num_molecules, dtype=torch.float64,
                           device=atomic.device).index_add(0, batch.molecule_index, atomic)


def build_model(config: dict[str, Any]) -> nn.Module:
    """Rebuild a model from its config dict (dispatch on ``config['architecture']``)."""
    arch = config.get("architecture")
    if arch == "equivariant_attention_potential":
        return EquivariantAttentionPotential(config)
    raise ValueError(f"unknown architecture {arch!r}")
