"""Batches of molecules as graphs: concatenated atoms plus radius-graph edges.

Edges are found without gradient (dense pairwise distances per molecule, fine up to a few
thousand atoms); models recompute edge vectors from ``positions`` so forces flow by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from gaqtool.data.frames import Frames

__all__ = ["Batch", "radius_graph", "make_batch", "iterate_batches"]


@dataclass
class Batch:
    """A batch of M molecules with n atoms in total and E directed edges.

    numbers:        (n,) int64 atomic numbers
    positions:      (n, 3) float, Angstrom
    molecule_index: (n,) int64, molecule of each atom in 0..M-1
    edge_src, edge_dst: (E,) int64; a message flows src -> dst, |x_src - x_dst| < cutoff
    energies:       (M,) float64 reference energies in eV, or None
    forces:         (n, 3) float reference forces in eV/Angstrom, or None
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    molecule_index: torch.Tensor
    num_molecules: int
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    energies: torch.Tensor | None = None
    forces: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        """Copy of the batch on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return replace(self, **moved)

    @property
    def num_atoms_per_molecule(self) -> torch.Tensor:
        """(M,) int64."""
        return torch.bincount(self.molecule_index, minlength=self.num_molecules)


def radius_graph(positions: torch.Tensor, molecule_index: torch.Tensor, cutoff: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed edges (src, dst) between distinct atoms of one molecule closer than ``cutoff`` A.

    positions: (n, 3); molecule_index: (n,) sorted. Returns two (E,) int64 tensors.
    """
    with torch.no_grad():
        counts = torch.bincount(molecule_index).tolist()
        srcs, dsts = [], []
        start = 0
        for count in counts:
            pos = positions[start:start + count]
            dist = torch.cdist(pos, pos)
            mask = dist < cutoff
            mask.fill_diagonal_(False)
            src, dst = mask.nonzero(as_tuple=True)
            srcs.append(src + start)
            dsts.append(dst + start)
            start += count
        return torch.cat(srcs), torch.cat(dsts)


def make_batch(frames: Frames, indices, cutoff: float, dtype: torch.dtype = torch.float32) -> Batch:
    """Batch the frames at ``indices`` with edges for ``cutoff`` (Angstrom)."""
    idx = [int(i) for i in indices]
    numbers = torch.from_numpy(np.concatenate([frames.numbers[i] for i in idx]))
    positions = torch.from_numpy(np.concatenate([frames.positions[i] for i in idx])).to(dtype)
    forces = torch.from_numpy(np.concatenate([frames.forces[i] for i in idx])).to(dtype)
    molecule_index = torch.repeat_interleave(
        torch.arange(len(idx)), torch.tensor([len(frames.numbers[i]) for i in idx]))
    src, dst = radius_graph(positions, molecule_index, cutoff)
    energies = torch.from_numpy(frames.energies[idx]).to(torch.float64)
    return Batch(numbers, positions, molecule_index, len(idx), src, dst, energies, forces)


def iterate_batches(frames: Frames, batch_size: int, cutoff: float, shuffle: bool = False,
                    generator: np.random.Generator | None = None, dtype: torch.dtype = torch.float32):
    """Yield batches covering all frames once (shuffled with ``generator`` if ``shuffle``)."""
    order = np.arange(len(frames))
    if shuffle:
        order = (generator or np.random.default_rng()).permutation(len(frames))
    for start in range(0, len(frames), batch_size):
        yield make_batch(frames, order[start:start + batch_size], cutoff, dtype)
