"""Channel-wise ('uvu') equivariant convolution done as a few batched matrix products.

For each input irrep l_in, the Clebsch-Gordan coupling with the edge spherical harmonics is
first contracted into a small per-edge matrix M (E, 2l_in+1, D) — one GEMM over edges — and
then every channel is mapped at once, x (E, C, 2l_in+1) @ M -> (E, C, D). This replaces
e3nn's generic TensorProduct, whose many narrow/zero-fill ops dominated the run time here,
with the same mathematics (Wigner 3j coefficients from ``e3nn.o3.wigner_3j``).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

__all__ = ["ChannelwiseConvolution"]


class ChannelwiseConvolution(nn.Module):
    """sum_{j in N(i)} w_ij * (x_j (x) Y(r_ij)) for every allowed path, channel by channel.

    irreps_in:  node features, every irrep with the same multiplicity C (mul_ir layout)
    irreps_sh:  edge spherical harmonics
    irreps_out: one block (C, l_out) per path, sorted by irrep (mul_ir layout)
    forward(node_features (n, irreps_in.dim), edge_sh (E, irreps_sh.dim),
            edge_weights (E, C, num_paths), edge_src (E,), edge_dst (E,)) -> (n, irreps_out.dim)
    """

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, allowed: set[o3.Irrep]):
        super().__init__()
        self.irreps_in, self.irreps_sh = o3.Irreps(irreps_in), o3.Irreps(irreps_sh)
        muls = {mul for mul, _ in self.irreps_in}
        if len(muls) != 1:
            raise ValueError(f"all input irreps need one multiplicity, got {self.irreps_in}")
        self.channels = muls.pop()
        paths = []  # (input block index, l_out irrep, column offset within its group)
        self.group_widths: list[int] = []
        for i, (_, ir_in) in enumerate(self.irreps_in):
            coupling, width = [], 0
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out not in allowed:
                        continue
                    cg = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64) * math.sqrt(ir_out.dim)
                    block = torch.zeros(self.irreps_sh.dim, ir_in.dim, ir_out.dim, dtype=torch.float64)
                    block[self.irreps_sh.slices()[j]] = cg.transpose(0, 1)
                    coupling.append(block)
                    paths.append((i, ir_out, width))
                    width += ir_out.dim
            # kept in float64 so that .double() models are exact; cast to the input dtype in forward
            self.register_buffer(f"coupling_{i}", torch.cat(coupling, dim=2).reshape(self.irreps_sh.dim, -1),
                                 persistent=False)
            self.group_widths.append(width)
        self.num_paths = len(paths)
        # order paths by output irrep so that irreps_out is sorted; remember where each column goes
        order = sorted(range(len(paths)), key=lambda p: (paths[p][1], p))
        self.irreps_out = o3.Irreps([(self.channels, paths[p][1]) for p in order])
        group_offsets = [sum(self.group_widths[:i]) for i in range(len(self.group_widths))]
        column_path, permutation = [], []
        for p, (i, ir_out, offset) in enumerate(paths):
            column_path += [p] * ir_out.dim
        for p in order:
            i, ir_out, offset = paths[p]
            permutation += list(range(group_offsets[i] + offset, group_offsets[i] + offset + ir_out.dim))
        self.register_buffer("column_path", torch.tensor(column_path), persistent=False)
        self.register_buffer("output_columns", torch.tensor(permutation), persistent=False)
        self.output_dims = [paths[p][1].dim for p in order]

    def forward(self, node_features, edge_sh, edge_weights, edge_src, edge_dst):
        num_nodes, num_edges, c = node_features.shape[0], edge_sh.shape[0], self.channels
        outputs = []
        for i, ((_, ir_in), sl) in enumerate(zip(self.irreps_in, self.irreps_in.slices())):
            x = node_features[:, sl].reshape(num_nodes, c, ir_in.dim).index_select(0, edge_src)  # (E, C, d_in)
            coupling_matrix = getattr(self, f"coupling_{i}").to(edge_sh.dtype)
            coupling = (edge_sh @ coupling_matrix).view(num_edges, ir_in.dim, self.group_widths[i])
            outputs.append(torch.bmm(x, coupling))                                     # (E, C, D_i)
        messages = torch.cat(outputs, dim=2) * edge_weights.index_select(2, self.column_path)  # (E, C, D)
        summed = messages.new_zeros(num_nodes, c, messages.shape[2]).index_add(0, edge_dst, messages)
        summed = summed.index_select(2, self.output_columns)
        blocks = summed.split(self.output_dims, dim=2)
        return torch.cat([b.reshape(num_nodes, -1) for b in blocks], dim=1)
