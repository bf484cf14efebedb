"""Layout helpers for e3nn flat features: split into per-irrep blocks, norms, merge back.

A flat feature tensor is ``(..., irreps.dim)``. Each ``(mul, ir)`` chunk of ``irreps`` owns a
contiguous slice of ``mul * (2l+1)`` entries laid out as

- ``"mul_ir"`` (e3nn's default): ``mul`` consecutive vectors of size ``2l+1``;
- ``"ir_mul"`` (cuEquivariance / MACE-cueq): the slice is ``(2l+1, mul)``, i.e. transposed.

Blocks are always returned as ``(..., mul, 2l+1)`` whatever the layout, so code that quantizes
per (channel, irrep) block never needs to know the layout.

>>> from e3nn import o3
>>> irreps = o3.Irreps("3x0e + 2x1o")
>>> x = torch.randn(5, irreps.dim)
>>> [tuple(b.shape) for b in split_blocks(x, irreps)]
[(5, 3, 1), (5, 2, 3)]
>>> tuple(block_norms(x, irreps).shape)
(5, 5)
>>> torch.equal(merge_blocks(split_blocks(x, irreps, "ir_mul"), irreps, "ir_mul"), x)
True
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import Tensor

from gaqtool.errors import InputError

__all__ = ["LAYOUTS", "split_blocks", "merge_blocks", "block_norms", "scalar_mask"]

LAYOUTS = ("mul_ir", "ir_mul")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise InputError(
            f"unknown irreps layout {layout!r}; allowed: {', '.join(LAYOUTS)}",
            hint="use 'mul_ir' for e3nn features, 'ir_mul' for cuEquivariance features",
        )


def _as_irreps(irreps: o3.Irreps | str) -> o3.Irreps:
    try:
        return o3.Irreps(irreps)
    except (ValueError, TypeError, AssertionError) as exc:
        raise InputError(
            f"invalid irreps {irreps!r}: {exc}", hint="write irreps like '8x0e + 4x1o + 2x2e'"
        ) from exc


def _check_features(x: Tensor, irreps: o3.Irreps) -> None:
    if x.dim() == 0 or x.shape[-1] != irreps.dim:
        raise InputError(
            f"feature tensor of shape {tuple(x.shape)} does not match irreps {irreps} "
            f"(last dimension must be irreps.dim = {irreps.dim})",
            hint="pass features shaped (..., irreps.dim) together with their own irreps",
        )


def split_blocks(x: Tensor, irreps: o3.Irreps, layout: str = "mul_ir") -> list[Tensor]:
    """Split flat features into one block per irreps chunk.

    Args:
        x: ``(..., irreps.dim)`` features of any float dtype, in ``layout``.
        irreps: the irreps of ``x``'s last dimension.
        layout: ``"mul_ir"`` or ``"ir_mul"``.

    Returns:
        ``len(irreps)`` tensors, the i-th shaped ``(..., mul_i, 2l_i+1)``, same dtype as ``x``.
        For ``mul_ir`` they are views of ``x``; for ``ir_mul`` transposed views.
    """
    irreps = _as_irreps(irreps)
    _check_layout(layout)
    _check_features(x, irreps)
    lead = x.shape[:-1]
    blocks = []
    for (mul, ir), sl in zip(irreps, irreps.slices()):
        chunk = x[..., sl]
        if layout == "mul_ir":
            blocks.append(chunk.reshape(*lead, mul, ir.dim))
        else:
            blocks.append(chunk.reshape(*lead, ir.dim, mul).transpose(-1, -2))
    return blocks


def merge_blocks(blocks: list[Tensor], irreps: o3.Irreps, layout: str = "mul_ir") -> Tensor:
    """Inverse of :func:`split_blocks`.

    Args:
        blocks: ``len(irreps)`` tensors, the i-th ``(..., mul_i, 2l_i+1)``, with equal leading
            shapes and dtypes.
        irreps: the irreps of the result.
        layout: ``"mul_ir"`` or ``"ir_mul"``, the layout of the result.

    Returns:
        ``(..., irreps.dim)`` flat features in ``layout`` (a new contiguous tensor).
    """
    irreps = _as_irreps(irreps)
    _check_layout(layout)
    if len(blocks) != len(irreps) or len(blocks) == 0:
        raise InputError(
            f"got {len(blocks)} blocks for irreps {irreps} with {len(irreps)} chunks",
            hint="pass exactly one block per irreps chunk (at least one), as split_blocks returns",
        )
    lead = blocks[0].shape[:-2]
    parts = []
    for block, (mul, ir) in zip(blocks, irreps):
        if block.dim() < 2 or block.shape[:-2] != lead or tuple(block.shape[-2:]) != (mul, ir.dim):
            raise InputError(
                f"block of shape {tuple(block.shape)} does not fit chunk {mul}x{ir} "
                f"with leading shape {tuple(lead)}",
                hint="each block must be shaped (..., mul, 2l+1) with a common leading shape",
            )
        if layout == "ir_mul":
            block = block.transpose(-1, -2)
        parts.append(block.reshape(*lead, mul * ir.dim))
    return torch.cat(parts, dim=-1)


def block_norms(
    x: Tensor, irreps: o3.Irreps, layout: str = "mul_ir", eps: float = 0.0
) -> Tensor:
    """L2 norm of every (channel, irrep) block, computed like e3nn's ``Norm``.

    Args:
        x: ``(..., irreps.dim)`` float features in ``layout``.
        irreps: the irreps of ``x``.
        layout: ``"mul_ir"`` or ``"ir_mul"``.
        eps: lower clamp of the returned norms (in the units of ``x``), like e3nn
            ``NormActivation``'s epsilon; ``0.0`` returns exact norms. The square root is taken
            of ``relu(sum of squares)``, so the gradient at a zero block is 0, not NaN.

    Returns:
        ``(..., irreps.num_irreps)`` non-negative norms, ordered chunk by chunk and channel by
        channel within a chunk (for l=0 this is ``|x|``). Same dtype as ``x``. Rotation invariant.
    """
    blocks = split_blocks(x, irreps, layout)
    sq = torch.cat([b.pow(2).sum(dim=-1) for b in blocks], dim=-1)  # (..., num_irreps)
    sq = sq.relu()
    if eps > 0.0:
        sq = sq.clamp_min(eps * eps)
    return sq.sqrt()


def scalar_mask(irreps: o3.Irreps, layout: str = "mul_ir") -> Tensor:
    """Boolean mask of the l=0 components of a flat feature vector.

    Args:
        irreps: the irreps of the features.
        layout: ``"mul_ir"`` or ``"ir_mul"`` (validated; the mask is the same for both, since
            a chunk occupies the same slice in either layout).

    Returns:
        ``(irreps.dim,)`` ``torch.bool`` tensor, True where the component belongs to an l=0 irrep.
    """
    irreps = _as_irreps(irreps)
    _check_layout(layout)
    mask = torch.zeros(irreps.dim, dtype=torch.bool)
    for (_, ir), sl in zip(irreps, irreps.slices()):
        if ir.l == 0:
            mask[sl] = True
    return mask
