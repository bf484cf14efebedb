"""Affine integer quantization as pure tensor functions: choose_qparams -> quantize -> dequantize.

Conventions: ``x ≈ (q - zero_point) * scale`` with ``q`` integer in :func:`qrange`. ``scale`` and
``zero_point`` broadcast against ``x``; the caller shapes them (0-d for per-tensor, e.g. ``(C, 1)``
for per-channel along the first axis of a ``(C, K)`` weight). Units of ``scale`` are those of ``x``.

>>> scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), num_bits=8, symmetric=True)
>>> q = quantize(torch.tensor([0.5, -2.0]), scale, zp, num_bits=8, symmetric=True)
>>> q.tolist()
[64, -127]
"""

from __future__ import annotations

import math

import torch

from gaqtool.errors import InputError

__all__ = [
    "qrange",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "fake_quantize_lsq",
    "sqnr_db",
]

MAX_NUM_BITS = 16


def qrange(num_bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)``.

    Symmetric is restricted: ``(-(2**(b-1) - 1), 2**(b-1) - 1)``, e.g. (-127, 127) for 8 bits, so
    that ``-q`` is always representable. Asymmetric is ``(0, 2**b - 1)``.

    Raises:
        InputError: ``num_bits`` outside 1..16 (2..16 when symmetric).
    """
    low = 2 if symmetric else 1
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not (
        low <= num_bits <= MAX_NUM_BITS
    ):
        kind = "symmetric" if symmetric else "asymmetric"
        raise InputError(
            f"num_bits={num_bits!r} is not supported for {kind} quantization; "
            f"allowed: {low}..{MAX_NUM_BITS}",
            hint="choose a bit-width such as 8 or 4",
        )
    if symmetric:
        qmax = (1 << (num_bits - 1)) - 1
        return -qmax, qmax
    return 0, (1 << num_bits) - 1


def choose_qparams(
    x_min: torch.Tensor,
    x_max: torch.Tensor,
    num_bits: int,
    symmetric: bool,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point covering ``[x_min, x_max]``, elementwise.

    Args:
        x_min, x_max: same shape ``(...)`` floating, units of x (0-d per-tensor, ``(C,)``
            per-channel).
        num_bits, symmetric: see :func:`qrange`.
        eps: lower bound of the scale, avoids division by zero for constant-zero inputs.

    Returns:
        ``scale``: ``(...)`` float32, units of x, ``>= eps``.
        ``zero_point``: ``(...)`` int32 in ``qrange``; zeros when symmetric.

    Raises:
        InputError: shape mismatch or ``x_min > x_max`` somewhere.
    """
    qmin, qmax = qrange(num_bits, symmetric)
    x_min = torch.as_tensor(x_min).to(torch.float32)
    x_max = torch.as_tensor(x_max).to(torch.float32)
    if x_min.shape != x_max.shape:
        raise InputError(
            f"x_min has shape {tuple(x_min.shape)} but x_max has {tuple(x_max.shape)}",
            hint="pass per-tensor (0-d) or per-channel (C,) bounds of equal shape",
        )
    if bool((x_min > x_max).any()):
        raise InputError(
            "x_min exceeds x_max for some channel", hint="pass x_min <= x_max (calibration range)"
        )
    if symmetric:
        amax = torch.maximum(x_min.abs(), x_max.abs())
        scale = (amax / qmax).clamp_min(eps)
        return scale, torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    lo = x_min.clamp_max(0.0)  # range extended to contain 0 so that 0 is exact
    hi = x_max.clamp_min(0.0)
    scale = ((hi - lo) / float(qmax - qmin)).clamp_min(eps)
    zero_point = (qmin - torch.round(lo / scale)).clamp(qmin, qmax).to(torch.int32)
    return scale, zero_point


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    num_bits: int,
    symmetric: bool,
) -> torch.Tensor:
    """Integer codes ``clamp(round(x / scale) + zero_point, qmin, qmax)``.

    Args:
        x: ``(...)`` floating, units of x.
        scale: float, broadcastable to ``x``. zero_point: integer, broadcastable to ``x``.

    Returns:
        ``x.shape`` torch.int32. Rounding is half-to-even (``torch.round``).
    """
    qmin, qmax = qrange(num_bits, symmetric)
    q = torch.round(x / scale) + zero_point
    return q.clamp(qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Real values ``(q - zero_point) * scale``: broadcast shape, torch.float32, units of x."""
    q = q.to(torch.float32)
    zero_point = torch.as_tensor(zero_point).to(torch.float32)
    scale = torch.as_tensor(scale).to(torch.float32)
    return (q - zero_point) * scale


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    num_bits: int,
    symmetric: bool,
) -> torch.Tensor:
    """``dequantize(quantize(x))`` forward, identity gradient w.r.t. ``x`` (straight-through).

    Returns:
        ``x.shape`` in ``x.dtype``. ``scale`` and ``zero_point`` receive no gradient.
    """
    qmin, qmax = qrange(num_bits, symmetric)
    scale = torch.as_tensor(scale).detach().to(x.dtype)
    zero_point = torch.as_tensor(zero_point).detach().to(x.dtype)
    xd = x.detach()
    q = (torch.round(xd / scale) + zero_point).clamp(qmin, qmax)
    xq = (q - zero_point) * scale
    return x + (xq - xd)


def _scale_grad(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Identity in forward; multiplies the backward gradient by ``factor``."""
    return (t - t * factor).detach() + t * factor


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    """``round(t)`` in forward; identity gradient."""
    return t + (torch.round(t) - t).detach()


def fake_quantize_lsq(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    num_bits: int,
    symmetric: bool,
    identity_input_grad: bool = False,
) -> torch.Tensor:
    """Fake quantization with a learnable step size (LSQ, Esser et al. 2019).

    Forward equals :func:`fake_quantize`. Backward: ``x`` gets gradient 1 inside the clamp range
    and 0 outside (or 1 everywhere with ``identity_input_grad``, the rule of
    :func:`fake_quantize`: activations use it, so that forces by autograd are the same function
    in QAT as in the deployed model); ``scale`` gets the LSQ gradient ``round(v) - v`` inside /
    ``qmin - zp`` or ``qmax - zp`` outside (``v = x / scale + zp``), multiplied by
    ``1 / sqrt(x.numel() * qmax)``. ``zero_point`` is not learned.

    Args:
        x: ``(...)`` floating. scale: positive float tensor broadcastable to ``x``, usually
            ``requires_grad``. zero_point: integer tensor broadcastable to ``x``.

    Returns:
        ``x.shape`` in ``x.dtype``.
    """
    qmin, qmax = qrange(num_bits, symmetric)
    factor = 1.0 / math.sqrt(max(x.numel(), 1) * qmax)
    s = _scale_grad(torch.as_tensor(scale).to(x.dtype), factor)
    zp = torch.as_tensor(zero_point).detach().to(x.dtype)
    if identity_input_grad:
        v = (x.detach() / s + zp).clamp(qmin, qmax)
        return (_round_ste(v) - zp) * s + (x - x.detach())
    v = (x / s + zp).clamp(qmin, qmax)
    return (_round_ste(v) - zp) * s


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(||ref||^2 / ||ref - approx||^2)`` in dB.

    Computed in float64. ``inf`` when ``approx == reference`` exactly.

    Raises:
        InputError: the two tensors differ in shape.
    """
    if reference.shape != approx.shape:
        raise InputError(
            f"reference shape {tuple(reference.shape)} != approx shape {tuple(approx.shape)}",
            hint="compare tensors of the same shape",
        )
    ref = reference.detach().to(torch.float64)
    err = ref - approx.detach().to(torch.float64)
    signal = float((ref * ref).sum())
    noise = float((err * err).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
