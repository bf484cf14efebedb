"""Fused uvu tensor-product convolution: gather senders, couple with the edge harmonics, weight
per edge, scatter-sum to receivers; equal to ``e3nn.o3.TensorProduct`` (mode 'uvu', per-edge
weights) followed by a scatter-sum, as in SevenNet's and NequIP's interaction.

For every instruction p = (i, j, k) of the product, edge e from sender s to receiver r:

    out[r, k][u, c] += path_weight_p * sum_{a, b} C[a, b, c] x[s, i][u, a] Y[e, j][b] w_p[e, u]

with C = ``o3.wigner_3j(l_i, l_j, l_k)`` and e3nn's own normalized ``path_weight`` (read from the
product, so irrep and path normalization follow whatever the product was built with).

How it is computed:

1. Contract C with each edge's harmonics first: M = Y @ coupling, ``(E, sum_p d_i d_k)``, one
   small GEMM (autograd differentiates it, so gradients reach the harmonics and edge vectors).
2. Node features go to the ir_mul layout (channel index contiguous), a node-sized permutation.
3. One C kernel (``uvu_native.c``) runs gather, coupling, weighting and scatter in one pass per
   receiver, without per-edge message tensors; its backward has two more kernels (gradient of
   the node features, scattered per sender; per-edge gradients of M and of the weights). A
   custom autograd Function ties them together; nothing is zero-filled per edge.
4. With ``create_graph`` (training on forces) the backward is the differentiable PyTorch
   formulation below, so second derivatives are exact. The same formulation runs when the C
   kernels are unavailable (no compiler), for float64, and for non-CPU tensors.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from gaqtool.kernels.native import native_library

__all__ = ["UvuConvolution", "EdgeIndex", "edge_index", "eager_uvu_convolution", "uvu_tensor_product"]


class EdgeIndex:
    """Edges sorted for the scatter-free kernels: src, dst (E,) int64 and, for receivers and
    senders, the edge order (E,) int64 and CSR row pointers (num_nodes + 1,) int64."""

    def __init__(self, src: torch.Tensor, dst: torch.Tensor, num_nodes: int):
        self.src, self.dst, self.num_nodes = src.contiguous(), dst.contiguous(), int(num_nodes)
        self.by_dst, self.dst_rowptr = _csr(self.dst, self.num_nodes)
        self.by_src, self.src_rowptr = _csr(self.src, self.num_nodes)


def _csr(index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.argsort(index, stable=True)
    rowptr = torch.zeros(num_nodes + 1, dtype=torch.int64, device=index.device)
    torch.cumsum(torch.bincount(index, minlength=num_nodes), 0, out=rowptr[1:])
    return order, rowptr


def edge_index(src: torch.Tensor, dst: torch.Tensor, num_nodes: int) -> EdgeIndex:
    """:class:`EdgeIndex` of int64 sender/receiver indices (E,), a message flows src -> dst."""
    return EdgeIndex(src.to(torch.int64), dst.to(torch.int64), num_nodes)


class UvuConvolution(nn.Module):
    """sum over edges into receivers of ``o3.TensorProduct(x[src], Y, w)``, for 'uvu' products.

    irreps_in1: node features (mul_ir layout); irreps_in2: edge attributes (spherical harmonics,
    multiplicity 1); irreps_out: the product's output irreps (mul_ir). Build it from the product
    with :meth:`from_tensor_product`. Holds only non-persistent buffers: state dicts do not change.

    forward(node_features (N, irreps_in1.dim), edge_attrs (E, irreps_in2.dim),
            edge_weights (E, weight_numel) in e3nn's per-instruction layout,
            edges: EdgeIndex) -> (N, irreps_out.dim)

    ``use_native``: 'auto' (C kernels for float32 CPU tensors when they build), 'never'.
    """

    def __init__(self, irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, irreps_out: o3.Irreps,
                 instructions: list[tuple[int, int, int, float]], use_native: str = "auto"):
        super().__init__()
        self.irreps_in1, self.irreps_in2 = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2)
        self.irreps_out = o3.Irreps(irreps_out)
        self.use_native = use_native
        rows, blocks, m_dim, w_off = [], [], 0, 0
        for i, j, k, path_weight in instructions:
            (mul, ir_in), (mul_sh, ir_sh), (mul_out, ir_out) = (
                self.irreps_in1[i], self.irreps_in2[j], self.irreps_out[k])
            if mul_sh != 1 or mul_out != mul:
                raise ValueError(f"uvu path {i, j, k} needs a multiplicity-1 edge input and "
                                 f"mul_out == mul_in, got {mul}x{ir_in} x {mul_sh}x{ir_sh} -> {mul_out}x{ir_out}")
            cg = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l, dtype=torch.float64) * path_weight
            blocks.append((self.irreps_in2.slices()[j], m_dim, cg))
            rows.append([self.irreps_in1.slices()[i].start, mul, ir_in.dim, ir_out.dim,
                         self.irreps_out.slices()[k].start, m_dim, w_off])
            m_dim += ir_in.dim * ir_out.dim
            w_off += mul
        coupling = torch.zeros(self.irreps_in2.dim, m_dim, dtype=torch.float64)
        for sh_slice, offset, cg in blocks:  # cg (d_in, d_sh, d_out) -> rows b, columns a * d_out + c
            d_in, d_sh, d_out = cg.shape
            coupling[sh_slice, offset:offset + d_in * d_out] = cg.permute(1, 0, 2).reshape(d_sh, -1)
        self.weight_numel, self.m_dim = w_off, m_dim
        self.register_buffer("coupling", coupling, persistent=False)        # (in2.dim, m_dim) float64
        self.register_buffer("paths", torch.tensor(rows, dtype=torch.int32).reshape(-1, 7),
                             persistent=False)                                # (P, 7) int32
        self.register_buffer("in_to_ir_mul", _ir_mul_permutation(self.irreps_in1), persistent=False)
        self.register_buffer("out_to_mul_ir", torch.argsort(_ir_mul_permutation(self.irreps_out)),
                             persistent=False)
        self.path_rows = [tuple(r) for r in rows]

    @classmethod
    def from_tensor_product(cls, tp: o3.TensorProduct, use_native: str = "auto") -> "UvuConvolution":
        """The convolution of an e3nn product with per-edge weights and only 'uvu' instructions."""
        if tp.shared_weights or tp.internal_weights:
            raise ValueError("the fused convolution needs per-edge weights (shared_weights=False)")
        bad = [ins for ins in tp.instructions if ins.connection_mode != "uvu" or not ins.has_weight]
        if bad:
            raise ValueError(f"only weighted 'uvu' instructions are supported, got {bad[0]}")
        return cls(tp.irreps_in1, tp.irreps_in2, tp.irreps_out,
                   [(ins.i_in1, ins.i_in2, ins.i_out, ins.path_weight) for ins in tp.instructions],
                   use_native)

    def extra_repr(self) -> str:
        return f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, {len(self.path_rows)} paths"

    def flops_per_edge(self, backward: bool = True) -> int:
        """Floating-point operations per edge of the C kernels' inner loops (2 per multiply or
        multiply-add):
        forward mul * d_in * (1 + d_out) multiply-adds per path; the backward adds
        mul * d_in * (1 + d_out) for the node gradient and mul * d_in * (2 + 2 d_out) for the
        weight and coupling gradients. The M = Y @ coupling GEMM is not included."""
        forward = sum(mul * d_in * (1 + d_out) for _, mul, d_in, d_out, *_ in self.path_rows)
        extra = sum(mul * d_in * (3 + 3 * d_out) for _, mul, d_in, d_out, *_ in self.path_rows)
        return 2 * (forward + (extra if backward else 0))

    def forward(self, node_features: torch.Tensor, edge_attrs: torch.Tensor, edge_weights: torch.Tensor,
                edges: EdgeIndex) -> torch.Tensor:
        dtype = node_features.dtype
        xt = node_features.index_select(1, self.in_to_ir_mul)          # (N, in1.dim) ir_mul
        m = edge_attrs.to(dtype) @ self.coupling.to(dtype)              # (E, m_dim)
        w = edge_weights.to(dtype)
        library = native_library() if self._native_wanted(xt) else None
        if library is None or edges.src.numel() == 0:
            out_t = eager_uvu_convolution(self.path_rows, xt, m, w, edges, self.irreps_out.dim)
        else:
            out_t = _NativeUvuConvolution.apply(xt.contiguous(), m.contiguous(), w.contiguous(),
                                                edges, self)
        return out_t.index_select(1, self.out_to_mul_ir)

    def _native_wanted(self, xt: torch.Tensor) -> bool:
        return self.use_native != "never" and xt.dtype == torch.float32 and xt.device.type == "cpu"


def uvu_tensor_product(irreps_x: str | o3.Irreps, irreps_sh: str | o3.Irreps, lmax: int) -> o3.TensorProduct:
    """The e3nn convolution product SevenNet and NequIP build: every path x (x) Y -> l_out <=
    ``lmax`` in mode uvu, one output block per path (sorted), per-edge weights, e3nn's default
    normalizations. The reference the fused kernel is measured and tested against."""
    irreps_x, irreps_sh = o3.Irreps(irreps_x), o3.Irreps(irreps_sh)
    instructions, mid = [], []
    for i, (mul, ir) in enumerate(irreps_x):
        for j, (_, ir_sh) in enumerate(irreps_sh):
            for ir_out in ir * ir_sh:
                if ir_out.l <= lmax:
                    mid.append((mul, ir_out))
                    instructions.append((i, j, len(mid) - 1))
    irreps_mid, permutation, _ = o3.Irreps(mid).sort()
    instructions = sorted(((i, j, permutation[k], "uvu", True) for i, j, k in instructions),
                          key=lambda ins: ins[2])
    return o3.TensorProduct(irreps_x, irreps_sh, irreps_mid, instructions,
                            shared_weights=False, internal_weights=False)


def _ir_mul_permutation(irreps: o3.Irreps) -> torch.Tensor:
    """Column indices that take (..., irreps.dim) from mul_ir to ir_mul, block by block."""
    index = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        index.append(torch.arange(sl.start, sl.stop).view(mul, ir.dim).t().reshape(-1))
    return torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)


def eager_uvu_convolution(path_rows: list[tuple], xt: torch.Tensor, m: torch.Tensor, w: torch.Tensor,
                          edges: EdgeIndex, out_dim: int) -> torch.Tensor:
    """The same convolution in differentiable PyTorch ops (reference, fallback, double backward).

    xt (N, x_dim) ir_mul node features; m (E, m_dim); w (E, weight_numel) -> (N, out_dim) ir_mul.
    """
    num_nodes, num_edges = xt.shape[0], m.shape[0]
    messages, columns = [], []
    for x_off, mul, d_in, d_out, out_off, m_off, w_off in path_rows:
        x = xt[:, x_off:x_off + d_in * mul].reshape(num_nodes, d_in, mul).index_select(0, edges.src)
        coupling = m[:, m_off:m_off + d_in * d_out].reshape(num_edges, d_in, d_out)
        message = torch.einsum("eau,eac->ecu", x, coupling) * w[:, w_off:w_off + mul].unsqueeze(1)
        messages.append(message.reshape(num_edges, d_out * mul))
        columns.append(torch.arange(out_off, out_off + d_out * mul, device=xt.device))
    if not messages:
        return xt.new_zeros(num_nodes, out_dim)
    summed = xt.new_zeros(num_nodes, sum(c.numel() for c in columns)).index_add(
        0, edges.dst, torch.cat(messages, dim=1))
    return xt.new_zeros(num_nodes, out_dim).index_add(1, torch.cat(columns), summed)


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


class _NativeUvuConvolution(torch.autograd.Function):
    """The C kernels as an autograd Function; the backward with create_graph is the eager one."""

    @staticmethod
    def forward(ctx, xt, m, w, edges: EdgeIndex, conv: UvuConvolution):
        library = native_library()
        paths = conv.paths
        out = xt.new_zeros(edges.num_nodes, conv.irreps_out.dim)
        library.uvu_forward(edges.num_nodes, _pointer(edges.dst_rowptr), _pointer(edges.by_dst),
                            _pointer(edges.src), _pointer(xt), xt.shape[1], _pointer(m), m.shape[1],
                            _pointer(w), w.shape[1], _pointer(paths), paths.shape[0], _pointer(out),
                            out.shape[1], torch.get_num_threads())
        ctx.save_for_backward(xt, m, w)
        ctx.edges, ctx.conv = edges, conv
        return out

    @staticmethod
    def backward(ctx, grad_out):
        xt, m, w = ctx.saved_tensors
        edges, conv = ctx.edges, ctx.conv
        need_x, need_m, need_w = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: differentiable formulation
            inputs = [t for t, need in zip((xt, m, w), (need_x, need_m, need_w)) if need]
            out = eager_uvu_convolution(conv.path_rows, xt, m, w, edges, conv.irreps_out.dim)
            grads = iter(torch.autograd.grad(out, inputs, grad_out, create_graph=True, allow_unused=True))
            return (*(next(grads) if need else None for need in (need_x, need_m, need_w)), None, None)
        library, paths, threads = native_library(), conv.paths, torch.get_num_threads()
        grad_out = grad_out.contiguous()
        grad_x = grad_m = grad_w = None
        if need_x:
            grad_x = torch.zeros_like(xt)
            library.uvu_grad_nodes(edges.num_nodes, _pointer(edges.src_rowptr), _pointer(edges.by_src),
                                   _pointer(edges.dst), _pointer(grad_out), grad_out.shape[1],
                                   _pointer(m), m.shape[1], _pointer(w), w.shape[1], _pointer(paths),
                                   paths.shape[0], _pointer(grad_x), xt.shape[1], threads)
        if need_m or need_w:
            grad_m = torch.empty_like(m) if need_m else None
            grad_w = torch.empty_like(w) if need_w else None
            library.uvu_grad_edges(m.shape[0], _pointer(edges.src), _pointer(edges.dst), _pointer(xt),
                                   xt.shape[1], _pointer(grad_out), grad_out.shape[1], _pointer(m),
                                   m.shape[1], _pointer(w), w.shape[1], _pointer(paths), paths.shape[0],
                                   _pointer(grad_w), _pointer(grad_m), threads)
        return grad_x, grad_m, grad_w, None, None
