"""Equivariant local frames for direction quantization ("frame" direction mode).

Rounding the components of an l>0 feature on a fixed grid breaks rotation equivariance because
the grid is tied to the global axes. Here each row of a feature tensor (an atom or an edge) gets
its own orthonormal frame built from its own l=1 channels: the main axis along the l=1 channel
of largest norm, a second axis along the largest part of another l=1 channel orthogonal to it,
and their cross product. The choices depend only on invariants (norms), so the frame rotates with the
molecule; components expressed in it are invariant, and rounding them there commutes with
rotations: Q(D(R) x) = D(R) Q(x) up to float noise. Same bits as the global component grid.

Rotations act on e3nn's l=1 basis (components ordered y, z, x; a cyclic permutation of x, y, z,
so cross products keep their handedness). Matrices for l >= 2 follow from the l=1 one through
Clebsch-Gordan coefficients: D_l = W^T (D_1 (x) D_{l-1}) W / c with W = wigner_3j(1, l-1, l).

Rows whose l=1 channels are all (nearly) parallel have no second axis from the data; the second
axis is then taken from the global axis least aligned with the first. That choice is not
equivariant, but it matters only for features not symmetric about the first axis with no other
l=1 direction to fix them (spherical harmonics of one edge direction are symmetric, so they are
quantized equivariantly anyway). Rows without any l=1 signal get the identity frame.
"""

from __future__ import annotations

import functools

import torch
from e3nn import o3
from torch import Tensor

__all__ = ["local_frames", "wigner_from_l1", "to_local", "from_local"]

# Second axis from the data only if some l=1 channel has an orthogonal part above this fraction
# of the first axis' norm (below it the frame's float error would exceed ~1e-5 rad).
PARALLEL_TOLERANCE = 1e-2
_TINY = 1e-20


def local_frames(vectors: Tensor) -> Tensor:
    """Per-row rotation ``R (..., 3, 3)`` whose rows are the frame axes (local = R @ v); the
    main axis is row 1 (e3nn's z slot), the second axis row 0 (y), their cross product row 2 (x).

    Args:
        vectors: ``(..., C, 3)`` l=1 channel vectors of each row, e3nn basis (y, z, x).

    Returns:
        ``(..., 3, 3)`` proper rotations (det +1), same dtype; no gradient (frames are treated as
        constants by the straight-through estimator of the quantizer).
    """
    v = vectors.detach()
    norms = torch.linalg.vector_norm(v, dim=-1)  # (..., C)
    first = torch.gather(v, -2, norms.argmax(-1)[..., None, None].expand(*v.shape[:-2], 1, 3)).squeeze(-2)
    first_norm = torch.linalg.vector_norm(first, dim=-1, keepdim=True)  # (..., 1)
    a = first / first_norm.clamp_min(_TINY)
    perpendicular = v - (v * a.unsqueeze(-2)).sum(-1, keepdim=True) * a.unsqueeze(-2)
    perp_norms = torch.linalg.vector_norm(perpendicular, dim=-1)
    second = torch.gather(perpendicular, -2,
                          perp_norms.argmax(-1)[..., None, None].expand(*v.shape[:-2], 1, 3)).squeeze(-2)
    second_norm = torch.linalg.vector_norm(second, dim=-1, keepdim=True)
    # fallback second axis: the global axis least aligned with the first, made orthogonal
    axis = torch.nn.functional.one_hot(a.abs().argmin(-1), 3).to(v.dtype)
    fallback = axis - (axis * a).sum(-1, keepdim=True) * a
    use_data = second_norm > PARALLEL_TOLERANCE * first_norm
    second = torch.where(use_data, second, fallback)
    b = second / torch.linalg.vector_norm(second, dim=-1, keepdim=True).clamp_min(_TINY)
    # local components are (y, z, x) in e3nn order: the first axis goes to z, where the
    # spherical harmonics of that axis are exactly (0, .., 0, c, 0, .., 0) and land on the
    # grid; along y or x they would sit on grid midpoints (e.g. -0.5 for l=2), where float
    # noise decides the rounding
    c = torch.linalg.cross(b, a, dim=-1)
    frame = torch.stack([b, a, c], dim=-2)
    identity = torch.eye(3, dtype=v.dtype, device=v.device).expand_as(frame)
    return torch.where((first_norm > _TINY).unsqueeze(-1), frame, identity)


@functools.lru_cache(maxsize=None)
def _coupling(l: int) -> tuple[Tensor, float]:
    """W (3 * (2l-1), 2l+1) float64 from wigner_3j(1, l-1, l) and c with W^T W = c I."""
    w = o3.wigner_3j(1, l - 1, l, dtype=torch.float64).reshape(3 * (2 * l - 1), 2 * l + 1)
    return w, float((w.T @ w)[0, 0])


def wigner_from_l1(rotation: Tensor, lmax: int) -> dict[int, Tensor]:
    """{l: D_l (..., 2l+1, 2l+1)} for l = 1..lmax from ``rotation (..., 3, 3)`` in e3nn's l=1 basis."""
    out = {1: rotation}
    for l in range(2, lmax + 1):
        w, c = _coupling(l)
        w = w.to(rotation.dtype).to(rotation.device)
        prev = out[l - 1]
        kron = (rotation[..., :, None, :, None] * prev[..., None, :, None, :]).reshape(
            *rotation.shape[:-2], 3 * (2 * l - 1), 3 * (2 * l - 1))
        out[l] = w.T @ kron @ w / c
    return out


def to_local(block: Tensor, d: Tensor) -> Tensor:
    """``block (..., mul, 2l+1)`` in the frames ``d (..., 2l+1, 2l+1)``: D @ v per channel."""
    return torch.einsum("...ij,...cj->...ci", d, block)


def from_local(block: Tensor, d: Tensor) -> Tensor:
    """Inverse of :func:`to_local` (D orthogonal): D^T @ v per channel."""
    return torch.einsum("...ji,...cj->...ci", d, block)
