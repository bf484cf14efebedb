"""Batches of structures as graphs: concatenated atoms plus radius-graph edges.

Neighbour lists come from vesin (periodic or not), without gradient. Every edge carries the
integer cell offset of its sender, so models recompute edge vectors from ``positions`` and
``cell`` (``Batch.edge_vectors``) and forces and stress flow by autograd.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from gaqtool.data.frames import Frames

__all__ = ["Batch", "neighbour_list", "radius_graph", "make_batch", "iterate_batches",
           "structures_batch"]


@dataclass
class Batch:
    """A batch of M structures with n atoms in total and E directed edges.

    numbers:        (n,) int64 atomic numbers
    positions:      (n, 3) float, Angstrom
    molecule_index: (n,) int64, structure of each atom in 0..M-1
    edge_src, edge_dst: (E,) int64; a message flows src -> dst
    energies:       (M,) float64 reference energies in eV, or None
    forces:         (n, 3) float reference forces in eV/Angstrom, or None
    cell:           (M, 3, 3) float lattice vectors as rows, Angstrom (zeros: no cell), or None
    edge_offsets:   (E, 3) float integer cell offsets of each edge's sender, or None (none)
    """

    numbers: torch.Tensor
    positions: torch.Tensor
    molecule_index: torch.Tensor
    num_molecules: int
    edge_src: torch.Tensor
    edge_dst: torch.Tensor
    energies: torch.Tensor | None = None
    forces: torch.Tensor | None = None
    cell: torch.Tensor | None = None
    edge_offsets: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        """Copy of the batch on ``device``."""
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return replace(self, **moved)

    @property
    def num_atoms_per_molecule(self) -> torch.Tensor:
        """(M,) int64."""
        return torch.bincount(self.molecule_index, minlength=self.num_molecules)

    def edge_vectors(self) -> torch.Tensor:
        """(E, 3) vectors from each edge's receiver to its sender, x_src - x_dst + n_src . cell,
        Angstrom; differentiable with respect to ``positions`` and ``cell``."""
        vectors = (self.positions.index_select(0, self.edge_src)
                   - self.positions.index_select(0, self.edge_dst))
        if self.edge_offsets is None or self.cell is None:
            return vectors
        cells = self.cell.to(vectors.dtype).index_select(0, self.molecule_index.index_select(0, self.edge_dst))
        return vectors + torch.einsum("ei,eij->ej", self.edge_offsets.to(vectors.dtype), cells)

    def volumes(self) -> torch.Tensor:
        """(M,) float64 cell volumes, A^3 (0 for structures without a cell)."""
        if self.cell is None:
            return torch.zeros(self.num_molecules, dtype=torch.float64)
        return torch.linalg.det(self.cell.detach().double()).abs()


def neighbour_list(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed pairs closer than ``cutoff`` (Angstrom) of one structure, from vesin.

    positions (N, 3), cell (3, 3) rows, pbc (3,) bool. Returns (src (E,), dst (E,), offsets
    (E, 3)) int64 with x_src - x_dst + offsets . cell the vector from dst to src; both
    directions of each pair are listed, self-pairs only across periodic images.
    """
    from vesin import NeighborList

    pbc = np.asarray(pbc, dtype=bool)
    box = np.asarray(cell, dtype=np.float64) if np.any(pbc) else np.zeros((3, 3))
    if np.any(pbc) and not np.all(pbc):
        # vesin needs a full-rank box: give the non-periodic directions a dummy length
        box = box.copy()
        for axis in np.nonzero(~pbc)[0]:
            if np.linalg.norm(box[axis]) == 0:
                box[axis] = np.eye(3)[axis]
    calculator = NeighborList(cutoff=float(cutoff), full_list=True)
    dst, src, offsets = calculator.compute(np.asarray(positions, dtype=np.float64), box,
                                           pbc if np.any(pbc) else False, "ijS")
    return src.astype(np.int64), dst.astype(np.int64), offsets.astype(np.int64)


def radius_graph(positions: torch.Tensor, molecule_index: torch.Tensor, cutoff: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed edges (src, dst) between distinct atoms of one molecule closer than ``cutoff`` A
    (no periodic images). positions: (n, 3); molecule_index: (n,) sorted. Two (E,) int64."""
    counts = torch.bincount(molecule_index).tolist()
    srcs, dsts, start = [], [], 0
    pos = positions.detach().double().cpu().numpy()
    for count in counts:
        src, dst, _ = neighbour_list(pos[start:start + count], np.zeros((3, 3)), np.zeros(3, bool), cutoff)
        srcs.append(torch.from_numpy(src) + start)
        dsts.append(torch.from_numpy(dst) + start)
        start += count
    return torch.cat(srcs), torch.cat(dsts)


def structures_batch(numbers: list[np.ndarray], positions: list[np.ndarray], cells: list[np.ndarray],
                     pbc: list[np.ndarray], cutoff: float, dtype: torch.dtype = torch.float32) -> Batch:
    """An unlabelled batch of structures (lists of (N_i,), (N_i, 3), (3, 3), (3,) arrays)."""
    srcs, dsts, offsets, start = [], [], [], 0
    for z, pos, cell, periodic in zip(numbers, positions, cells, pbc):
        src, dst, off = neighbour_list(pos, cell, periodic, cutoff)
        srcs.append(src + start)
        dsts.append(dst + start)
        offsets.append(off)
        start += len(z)
    counts = torch.tensor([len(z) for z in numbers])
    periodic_any = any(bool(np.any(p)) for p in pbc)
    return Batch(
        numbers=torch.from_numpy(np.concatenate(numbers).astype(np.int64)),
        positions=torch.from_numpy(np.concatenate(positions)).to(dtype),
        molecule_index=torch.repeat_interleave(torch.arange(len(numbers)), counts),
        num_molecules=len(numbers),
        edge_src=torch.from_numpy(np.concatenate(srcs)),
        edge_dst=torch.from_numpy(np.concatenate(dsts)),
        cell=torch.from_numpy(np.stack(cells)).to(dtype) if periodic_any else None,
        edge_offsets=torch.from_numpy(np.concatenate(offsets)).to(dtype) if periodic_any else None,
    )


def make_batch(frames: Frames, indices, cutoff: float, dtype: torch.dtype = torch.float32) -> Batch:
    """Batch the frames at ``indices`` with edges for ``cutoff`` (Angstrom) and their labels."""
    idx = [int(i) for i in indices]
    batch = structures_batch([frames.numbers[i] for i in idx], [frames.positions[i] for i in idx],
                             [frames.cell(i) for i in idx], [frames.periodic(i) for i in idx],
                             cutoff, dtype)
    batch.forces = torch.from_numpy(np.concatenate([frames.forces[i] for i in idx])).to(dtype)
    batch.energies = torch.from_numpy(frames.energies[idx]).to(torch.float64)
    return batch


def iterate_batches(frames: Frames, batch_size: int, cutoff: float, shuffle: bool = False,
                    generator: np.random.Generator | None = None, dtype: torch.dtype = torch.float32):
    """Yield batches covering all frames once (shuffled with ``generator`` if ``shuffle``)."""
    order = np.arange(len(frames))
    if shuffle:
        order = (generator or np.random.default_rng()).permutation(len(frames))
    for start in range(0, len(frames), batch_size):
        yield make_batch(frames, order[start:start + batch_size], cutoff, dtype)
