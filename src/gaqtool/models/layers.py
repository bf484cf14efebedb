"""Building blocks of the reference potential: radial MLP and the equivariant attention layer.

Irreps features are flat tensors in e3nn's ``mul_ir`` layout, ``(..., irreps.dim)``.
"""

from __future__ import annotations

import math

import torch
from e3nn import nn as enn
from e3nn import o3
from torch import nn

from gaqtool.models.convolution import ChannelwiseConvolution

__all__ = ["RadialMLP", "EquivariantAttentionLayer"]


class RadialMLP(nn.Module):
    """Per-edge MLP on the radial basis: (E, num_basis) -> (E, num_out), SiLU between layers.

    Built from ``nn.Linear`` so that its channel mixing is plain GEMMs over edges.
    """

    def __init__(self, num_basis: int, hidden: int, num_out: int, num_hidden_layers: int = 2):
        super().__init__()
        dims = [num_basis] + [hidden] * num_hidden_layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.out = nn.Linear(dims[-1], num_out, bias=False)

    def forward(self, basis: torch.Tensor) -> torch.Tensor:
        x = basis
        for layer in self.hidden:
            x = nn.functional.silu(layer(x))
        return self.out(x)


class EquivariantAttentionLayer(nn.Module):
    """One interaction: attention-weighted equivariant messages, gated update, residual.

    Messages m_ij = a_ij * TP(W_pre h_j, Y(r_ij); w(|r_ij|)) (channel-wise tensor product done
    by ``ChannelwiseConvolution``), with per-edge tensor-product weights w from a radial MLP, and attention a_ij from invariant features only
    (softmax over neighbours j of i, weighted by the smooth cutoff envelope so that the
    energy stays smooth when atoms cross the cutoff). Attention is either plain scaled
    dot-product or normalized: cosine similarity of q and k times a learned per-head
    temperature, which bounds the logits to [-T, T].

    Input/output: node features (n, irreps_node.dim), mul_ir layout.
    """

    def __init__(self, irreps_node: o3.Irreps, irreps_sh: o3.Irreps, num_basis: int,
                 radial_hidden: int, num_heads: int, key_dim: int, attention: str):
        super().__init__()
        self.irreps_in = self.irreps_out = irreps_node = o3.Irreps(irreps_node)
        num_scalars = irreps_node.count("0e")
        channels = {mul for mul, _ in irreps_node}
        if len(channels) != 1 or next(iter(channels)) % num_heads:
            raise ValueError("all irreps need the same multiplicity, divisible by num_heads")
        if attention not in ("cosine", "dot"):
            raise ValueError(f"attention must be 'cosine' or 'dot', got {attention!r}")
        self.attention, self.num_heads, self.key_dim = attention, num_heads, key_dim

        self.pre_linear = o3.Linear(irreps_node, irreps_node)
        self.convolution = ChannelwiseConvolution(irreps_node, irreps_sh, {ir for _, ir in irreps_node})
        irreps_mid = self.convolution.irreps_out
        self.channels = self.convolution.channels
        self.num_paths = self.convolution.num_paths
        self.num_weights = self.channels * self.num_paths
        self.radial = RadialMLP(num_basis, radial_hidden, self.num_weights + num_heads * key_dim)
        self.query = nn.Linear(num_scalars, num_heads * key_dim)
        self.key = nn.Linear(num_scalars, num_heads * key_dim)
        if attention == "cosine":
            self.log_temperature = nn.Parameter(torch.full((num_heads,), math.log(math.sqrt(key_dim))))
        # head of every channel, so a_ij (E, H) expands to (E, C)
        self.register_buffer("channel_head", torch.arange(self.channels).div(
            self.channels // num_heads, rounding_mode="floor"), persistent=False)

        irreps_scalars = o3.Irreps([(m, ir) for m, ir in irreps_node if ir.l == 0])
        irreps_gated = o3.Irreps([(m, ir) for m, ir in irreps_node if ir.l > 0])
        irreps_gates = o3.Irreps([(irreps_gated.num_irreps, "0e")])
        self.gate = enn.Gate(irreps_scalars, [nn.functional.silu], irreps_gates, [torch.sigmoid],
                             irreps_gated)
        self.post_linear = o3.Linear(irreps_mid, self.gate.irreps_in)
        self.num_scalars = num_scalars

    def attention_logits(self, scalars: torch.Tensor, radial_keys: torch.Tensor,
                         edge_src: torch.Tensor, edge_dst: torch.Tensor) -> torch.Tensor:
        """(E, H) logits from invariant node scalars (n, C0) and radial keys (E, H*dk)."""
        shape = (-1, self.num_heads, self.key_dim)
        q = self.query(scalars).index_select(0, edge_dst).view(shape)
        k = (self.key(scalars).index_select(0, edge_src) * radial_keys).view(shape)
        if self.attention == "cosine":
            # q/|q| . k/|k| with a smooth epsilon (twice differentiable, also for k -> 0)
            q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-8)
            k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-8)
            return (q * k).sum(-1) * self.log_temperature.exp()
        return (q * k).sum(-1) / math.sqrt(self.key_dim)

    def forward(self, node_features: torch.Tensor, edge_sh: torch.Tensor, edge_basis: torch.Tensor,
                edge_envelope: torch.Tensor, edge_src: torch.Tensor, edge_dst: torch.Tensor
                ) -> torch.Tensor:
        num_nodes = node_features.shape[0]
        radial = self.radial(edge_basis) * edge_envelope.unsqueeze(-1)
        tp_weights, radial_keys = radial.split([self.num_weights, radial.shape[1] - self.num_weights], -1)

        logits = self.attention_logits(node_features[:, :self.num_scalars], radial_keys,
                                       edge_src, edge_dst)
        # envelope-weighted softmax over the neighbours of each receiving atom
        max_per_node = logits.new_full((num_nodes, self.num_heads), -1e4).scatter_reduce(
            0, edge_dst.unsqueeze(-1).expand_as(logits), logits.detach(), "amax")
        weights = edge_envelope.unsqueeze(-1) * torch.exp(logits - max_per_node.index_select(0, edge_dst))
        norm = weights.new_zeros(num_nodes, self.num_heads).index_add(0, edge_dst, weights)
        alpha = weights / (norm.index_select(0, edge_dst) + 1e-9)

        # per-edge, per-channel, per-path weights (E, C, P), scaled by the attention of each head
        weights = tp_weights.view(-1, self.channels, self.num_paths) \
            * alpha.index_select(1, self.channel_head).unsqueeze(-1)
        aggregated = self.convolution(self.pre_linear(node_features), edge_sh, weights,
                                      edge_src, edge_dst)
        return node_features + self.gate(self.post_linear(aggregated))
