"""Magnitude-direction decoupled quantization (MDDQ) of l>=1 irrep blocks.

A block ``v (..., mul, 2l+1)`` (one vector per channel, see :func:`gaqtool.irreps.split_blocks`)
is split into its rotation-invariant norm ``r = |v|`` and its direction ``u = v / r``. The norm
gets an unsigned linear quantizer with a per-channel step; the direction gets one of the
quantizers of :mod:`gaqtool.quant.direction`; the result is ``Q(r) * Q(u)``. Because ``r`` is
invariant, the norm part is exactly equivariant; only direction rounding breaks symmetry, by a
bounded angle.

>>> block = torch.randn(10, 4, 3)                      # (batch, mul=4, 2l+1=3)
>>> scale = norm_scale_from_max(block.norm(dim=-1).amax(dim=0), norm_bits=8)  # (4,)
>>> mddq_fake_quantize(block, scale, 8, "component", 8).shape
torch.Size([10, 4, 3])
"""

from __future__ import annotations

import torch
from torch import Tensor

from gaqtool.config import DirectionMode
from gaqtool.errors import InputError
from gaqtool.quant.direction import (
    quantize_direction_codebook,
    quantize_direction_component,
    quantize_direction_fp16,
)

__all__ = [
    "DirectionMode",
    "mddq_fake_quantize",
    "norm_scale_from_max",
    "mddq_bits_per_vector",
]

MIN_NORM_SCALE = 1e-12


def _direction_mode(mode: str | DirectionMode) -> DirectionMode:
    """The block-level modes; 'frame' needs whole rows (their l=1 channels) and is applied by
    ActivationQuantizer, which rotates blocks into local frames and then uses 'component'."""
    allowed = (DirectionMode.COMPONENT, DirectionMode.CODEBOOK, DirectionMode.FP16)
    try:
        parsed = DirectionMode(mode)
    except ValueError:
        parsed = None
    if parsed not in allowed:
        raise InputError(
            f"direction mode {mode!r} is not a block-level mode; allowed: "
            f"{', '.join(m.value for m in allowed)}",
            hint="'frame' is applied by ActivationQuantizer (local frames, then 'component')",
        )
    return parsed


def _check_bits(name: str, bits: int, minimum: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {bits!r}")


def _quantize_norm(r: Tensor, norm_scale: Tensor, norm_bits: int) -> Tensor:
    """Unsigned fake quantization of ``r (..., mul)`` on ``{0, s, ..., (2**bits-1) s}``."""
    qmax = float(2**norm_bits - 1)
    return torch.round(r / norm_scale).clamp(0.0, qmax) * norm_scale


def _quantize_direction(
    u: Tensor, mode: DirectionMode, direction_bits: int, codebook: Tensor | None
) -> Tensor:
    if mode is DirectionMode.COMPONENT:
        return quantize_direction_component(u, direction_bits)
    if mode is DirectionMode.CODEBOOK:
        if codebook is None:
            raise InputError(
                "direction mode 'codebook' needs a codebook",
                hint="pass codebook=fibonacci_sphere(256)",
            )
        return quantize_direction_codebook(u, codebook)
    return quantize_direction_fp16(u)


def mddq_fake_quantize(
    block: Tensor,
    norm_scale: Tensor,
    norm_bits: int,
    direction_mode: str | DirectionMode,
    direction_bits: int,
    codebook: Tensor | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """Fake-quantize irrep blocks as ``Q(|v|) * Q(v / |v|)`` with a straight-through gradient.

    Args:
        block: ``(..., mul, d)`` float vectors, ``d = 2l+1`` (from ``split_blocks``; any layout).
        norm_scale: ``(mul,)`` per-channel norm step ``s`` (same unit as ``block``); a scalar
            or ``(1,)`` tensor is a per-tensor step. Norms are rounded to
            ``{0, s, ..., (2**norm_bits - 1) s}`` (round, then clamp).
        norm_bits: unsigned norm bits, >= 1.
        direction_mode: ``"component"``, ``"codebook"`` (needs ``codebook`` and ``d == 3``) or
            ``"fp16"``.
        direction_bits: bits per direction component (``"component"`` mode only, >= 2).
        codebook: ``(K, 3)`` unit vectors for ``"codebook"`` mode.
        eps: directions are ``v / max(|v|, eps)``.

    Returns:
        ``(..., mul, d)`` tensor, same dtype as ``block``: the forward value is exactly the
        quantized vector (zero vectors, and norms rounding to 0, give exact zeros); the
        backward pass is the identity w.r.t. ``block`` (straight-through estimator).
    """
    mode = _direction_mode(direction_mode)
    _check_bits("norm_bits", norm_bits, 1)
    if mode is DirectionMode.COMPONENT:
        _check_bits("direction_bits", direction_bits, 2)
    if block.dim() < 2:
        raise InputError(
            f"MDDQ block must be shaped (..., mul, 2l+1), got {tuple(block.shape)}",
            hint="split flat features with gaqtool.irreps.split_blocks first",
        )
    mul = block.shape[-2]
    if norm_scale.dim() > 1 or norm_scale.numel() not in (1, mul):
        raise InputError(
            f"norm_scale of shape {tuple(norm_scale.shape)} does not match mul = {mul}",
            hint="pass one norm step per channel, shaped (mul,), or a single per-tensor step",
        )
    v = block.detach()
    scale = norm_scale.detach().to(dtype=v.dtype, device=v.device).reshape(-1)  # (mul,) or (1,)
    r = v.pow(2).sum(dim=-1).relu().sqrt()  # (..., mul)
    r_q = _quantize_norm(r, scale, norm_bits)  # (..., mul)
    u = v / r.clamp_min(eps).unsqueeze(-1)  # (..., mul, d)
    u_q = _quantize_direction(u, mode, direction_bits, codebook)
    q = r_q.unsqueeze(-1) * u_q
    # Forward: q exactly (block - block.detach() is exactly 0); backward: identity.
    return q + (block - v)


def norm_scale_from_max(max_norm: Tensor, norm_bits: int) -> Tensor:
    """Norm step ``max_norm / (2**norm_bits - 1)``, clamped at ``MIN_NORM_SCALE``.

    Args:
        max_norm: ``(mul,)`` (or any shape) calibrated maximum block norms, float, same unit
            as the features; rotation invariant, so calibration is too.
        norm_bits: unsigned norm bits, >= 1.

    Returns:
        tensor of ``max_norm``'s shape and dtype.
    """
    _check_bits("norm_bits", norm_bits, 1)
    return (max_norm / float(2**norm_bits - 1)).clamp_min(MIN_NORM_SCALE)


def mddq_bits_per_vector(
    l: int,  # noqa: E741 - e3nn's name for the degree
    norm_bits: int,
    direction_mode: str | DirectionMode,
    direction_bits: int,
    codebook_size: int | None = None,
) -> int:
    """Storage bits of one MDDQ-quantized ``2l+1`` vector, for reports.

    component: ``norm_bits + (2l+1) * direction_bits``; codebook:
    ``norm_bits + ceil(log2(codebook_size))``; fp16: ``norm_bits + (2l+1) * 16``.
    """
    mode = _direction_mode(direction_mode)
    _check_bits("l", l, 0)
    _check_bits("norm_bits", norm_bits, 1)
    dim = 2 * l + 1
    if mode is DirectionMode.COMPONENT:
        _check_bits("direction_bits", direction_bits, 2)
        return norm_bits + dim * direction_bits
    if mode is DirectionMode.CODEBOOK:
        if codebook_size is None:
            raise InputError(
                "codebook mode needs codebook_size", hint="pass codebook_size=len(codebook)"
            )
        _check_bits("codebook_size", codebook_size, 1)
        return norm_bits + (codebook_size - 1).bit_length()
    return norm_bits + dim * 16
