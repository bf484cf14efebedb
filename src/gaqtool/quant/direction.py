"""Direction quantizers for unit vectors ``u (..., 2l+1)``: component grid, spherical codebook, FP16.

All quantizers are pure tensor functions returning fake-quantized float tensors of the same
shape and dtype as ``u``; none of them carries a gradient (MDDQ wraps them in a
straight-through estimator). Component order inside a block follows e3nn (for l=1 this is
``(y, z, x)``); the component grid and the FP16 cast treat components symmetrically and the
spherical codebook covers the whole sphere, so no reordering is ever needed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gaqtool.errors import InputError

__all__ = [
    "quantize_direction_component",
    "fibonacci_sphere",
    "quantize_direction_codebook",
    "quantize_direction_fp16",
    "angular_error_deg",
]

# Max elements of one (rows, codebook_size) similarity matrix in quantize_direction_codebook.
CODEBOOK_CHUNK_ELEMENTS = 1 << 22

_TINY = 1e-30


def _renormalize(q: Tensor) -> Tensor:
    """``q / |q|`` along the last dim; zero vectors stay zero."""
    return q / torch.linalg.vector_norm(q, dim=-1, keepdim=True).clamp_min(_TINY)


def quantize_direction_component(u: Tensor, num_bits: int) -> Tensor:
    """Round each component on a symmetric grid, then re-normalize to unit length.

    The grid is ``k / n`` with ``n = 2**(num_bits-1) - 1`` and integer ``k`` in ``[-n, n]``.
    If every component rounds to zero, the result is the signed one-hot vector of the
    largest-magnitude component (ties: first index; a zero input gives ``+e_0``), so the
    result is always a unit vector.

    Args:
        u: ``(..., d)`` float unit vectors (any d >= 1).
        num_bits: bits per component, >= 2.

    Returns:
        ``(..., d)`` unit vectors, same dtype as ``u``. Angular error for d=3 is at most about
        ``sqrt(3)/2 / n`` rad (8 bits: ~0.4 deg).
    """
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or num_bits < 2:
        raise InputError(
            f"direction num_bits must be an integer >= 2, got {num_bits!r}",
            hint="use e.g. 8 bits per direction component",
        )
    n = float(2 ** (num_bits - 1) - 1)
    u = u.detach()
    q = torch.round(u * n).clamp(-n, n)
    all_zero = (q == 0).all(dim=-1, keepdim=True)  # (..., 1)
    idx = u.abs().argmax(dim=-1, keepdim=True)
    sign = torch.where(u.gather(-1, idx) >= 0, 1.0, -1.0).to(u.dtype)
    one_hot = torch.zeros_like(u).scatter(-1, idx, sign)
    return torch.where(all_zero, one_hot, _renormalize(q))


def fibonacci_sphere(n: int, *, dtype: torch.dtype | None = None) -> Tensor:
    """Deterministic near-uniform spherical codebook (golden-angle Fibonacci lattice).

    Point i has ``z = 1 - (2i+1)/n``, azimuth ``i * pi * (3 - sqrt(5))``. Computed in float64.

    Args:
        n: number of points, >= 1.
        dtype: output dtype; default ``torch.get_default_dtype()``.

    Returns:
        ``(n, 3)`` unit vectors. The codebook ignores component order, so it serves e3nn's
        ``(y, z, x)`` l=1 convention as is.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(
            f"codebook size must be an integer >= 1, got {n!r}", hint="use e.g. 256 points"
        )
    i = torch.arange(n, dtype=torch.float64)
    z = 1.0 - (2.0 * i + 1.0) / n
    rho = (1.0 - z * z).clamp_min(0.0).sqrt()
    phi = i * (math.pi * (3.0 - math.sqrt(5.0)))
    points = torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], dim=-1)
    points = _renormalize(points)
    return points.to(dtype or torch.get_default_dtype())


def quantize_direction_codebook(
    u: Tensor, codebook: Tensor, *, chunk_size: int | None = None
) -> Tensor:
    """Snap l=1 directions to the codebook vector with the largest dot product.

    e3nn orders l=1 components ``(y, z, x)``; a codebook covering the unit sphere does not
    depend on the order, so none is applied.

    Args:
        u: ``(..., 3)`` float unit vectors.
        codebook: ``(K, 3)`` unit vectors (e.g. :func:`fibonacci_sphere`); cast to ``u``'s
            dtype and device.
        chunk_size: rows of ``u`` compared at once; default keeps each ``(rows, K)`` similarity
            matrix under ``CODEBOOK_CHUNK_ELEMENTS`` entries, so memory is bounded.

    Returns:
        ``(..., 3)`` codebook vectors, same dtype as ``u``.
    """
    if u.dim() == 0 or u.shape[-1] != 3:
        raise InputError(
            f"codebook direction quantization needs l=1 vectors (..., 3), got shape "
            f"{tuple(u.shape)}",
            hint="use the 'component' or 'fp16' direction mode for l != 1",
        )
    if codebook.dim() != 2 or codebook.shape[-1] != 3 or codebook.shape[0] == 0:
        raise InputError(
            f"codebook must be shaped (K, 3) with K >= 1, got {tuple(codebook.shape)}",
            hint="build one with fibonacci_sphere(K)",
        )
    if chunk_size is None:
        chunk_size = max(1, CODEBOOK_CHUNK_ELEMENTS // codebook.shape[0])
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    cb = codebook.detach().to(dtype=u.dtype, device=u.device)
    flat = u.detach().reshape(-1, 3)
    idx = torch.empty(flat.shape[0], dtype=torch.long, device=u.device)
    for start in range(0, flat.shape[0], chunk_size):
        stop = start + chunk_size
        idx[start:stop] = (flat[start:stop] @ cb.T).argmax(dim=-1)
    return cb[idx].reshape(u.shape)


def quantize_direction_fp16(u: Tensor) -> Tensor:
    """Cast ``u (..., d)`` to float16 and back, then re-normalize; same shape and dtype."""
    return _renormalize(u.detach().to(torch.float16).to(u.dtype))


def angular_error_deg(u: Tensor, uq: Tensor) -> Tensor:
    """Angle between ``u (..., d)`` and ``uq (..., d)`` in degrees, shape ``(...)``.

    Uses ``2 * atan2(|a - b|, |a + b|)`` on the normalized vectors, accurate for tiny and
    near-180-degree angles in any dimension. A zero vector is 90 degrees from any non-zero vector
    (0 from another zero vector).
    """
    a = _renormalize(u)
    b = _renormalize(uq)
    diff = torch.linalg.vector_norm(a - b, dim=-1)
    total = torch.linalg.vector_norm(a + b, dim=-1)
    return torch.rad2deg(2.0 * torch.atan2(diff, total))
