"""Calibration observers: range statistics accumulated over batches, without model knowledge.

An observer sees tensors ``(..., C, ...)`` with the channel axis at ``channel_dim`` (``None``:
one range for the whole tensor) and returns ``(min, max)`` as float32 tensors of shape ``(C,)``
(per-channel) or ``()`` (per-tensor), in the units of the observed tensor. Feed the result to
:func:`gaqtool.quant.primitives.choose_qparams`.

Empty batches are ignored and not counted in ``num_batches``; non-finite values raise DataError.

>>> obs = MinMaxObserver(channel_dim=1)
>>> obs.update(torch.tensor([[0.0, -1.0], [2.0, 3.0]]))
>>> [t.tolist() for t in obs.compute()]
[[0.0, -1.0], [2.0, 3.0]]
"""

from __future__ import annotations

import torch

from gaqtool.errors import DataError, InputError
from gaqtool.quant.primitives import choose_qparams, fake_quantize, qrange

__all__ = [
    "Observer",
    "MinMaxObserver",
    "PercentileObserver",
    "MSEObserver",
    "make_observer",
    "OBSERVER_KINDS",
]

OBSERVER_KINDS = ("minmax", "percentile", "mse")
PERCENTILE_MAX_SAMPLES = 2**20  # elements per channel and batch fed to torch.quantile
QUANTILE_MAX_INPUT = 2**24  # torch.quantile refuses larger inputs
MSE_MAX_SAMPLES = 2**16  # stored elements per channel for the MSE search
SAMPLING_SEED = 0


class Observer:
    """Base class: reshapes each batch to ``(C, N)`` and tracks the running min/max.

    Attributes:
        channel_dim: channel axis of the observed tensors, or ``None`` for per-tensor.
        num_batches: number of non-empty batches seen by :meth:`update`.
    """

    def __init__(self, channel_dim: int | None) -> None:
        if channel_dim is not None and (isinstance(channel_dim, bool) or not isinstance(
            channel_dim, int
        )):
            raise InputError(
                f"channel_dim={channel_dim!r} is not an integer", hint="pass an axis index or None"
            )
        self.channel_dim = channel_dim
        self.num_batches = 0
        self.min_val: torch.Tensor | None = None  # (C,) float32
        self.max_val: torch.Tensor | None = None  # (C,) float32

    def _to_channels(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as ``(C, N)`` float32 (``C = 1`` per-tensor), validated."""
        if not x.dtype.is_floating_point:
            raise InputError(
                f"observers need a floating tensor, got dtype {x.dtype}",
                hint="observe activations or weights before quantization",
            )
        x = x.detach()
        if self.channel_dim is None:
            flat = x.reshape(1, -1)
        else:
            if not -x.dim() <= self.channel_dim < x.dim():
                raise InputError(
                    f"channel_dim={self.channel_dim} is out of range for a tensor of shape "
                    f"{tuple(x.shape)}",
                    hint="pass the index of the channel axis of the observed tensor",
                )
            flat = x.movedim(self.channel_dim, 0).reshape(x.shape[self.channel_dim], -1)
        if self.min_val is not None and flat.shape[0] != self.min_val.shape[0]:
            raise InputError(
                f"batch has {flat.shape[0]} channels but earlier batches had "
                f"{self.min_val.shape[0]}",
                hint="observe tensors with a fixed channel count",
            )
        if flat.numel() > 0 and not bool(torch.isfinite(flat).all()):
            raise DataError(
                "observed tensor contains NaN or infinite values",
                hint="check the calibration data and the float model",
            )
        return flat.to(torch.float32)

    def update(self, x: torch.Tensor) -> None:
        """Accumulate statistics of one batch ``x`` (any floating dtype, channel axis as set)."""
        flat = self._to_channels(x)
        if flat.shape[1] == 0:
            return
        bmin, bmax = flat.amin(dim=1), flat.amax(dim=1)
        if self.min_val is None or self.max_val is None:
            self.min_val, self.max_val = bmin, bmax
        else:
            self.min_val = torch.minimum(self.min_val, bmin)
            self.max_val = torch.maximum(self.max_val, bmax)
        self._update_extra(flat)
        self.num_batches += 1

    def _update_extra(self, flat: torch.Tensor) -> None:
        """Hook for subclasses; ``flat`` is ``(C, N)`` float32 with ``N > 0``."""

    def _shape_out(self, t: torch.Tensor) -> torch.Tensor:
        return t.reshape(()) if self.channel_dim is None else t

    def _check_seen(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.min_val is None or self.max_val is None:
            raise DataError(
                "the observer saw no data", hint="calibrate on at least one non-empty batch"
            )
        return self.min_val, self.max_val

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(min, max)``: each ``(C,)`` or ``()`` float32, units of x. DataError if no data."""
        lo, hi = self._check_seen()
        return self._shape_out(lo.clone()), self._shape_out(hi.clone())


class MinMaxObserver(Observer):
    """Running min and max per channel (or per tensor)."""


class PercentileObserver(Observer):
    """Lower/upper percentiles per channel, averaged over batches.

    Each batch contributes its ``(100 - percentile)``-th and ``percentile``-th percentiles per
    channel, computed with ``torch.quantile`` (linear interpolation) on at most 2**20 elements per
    channel, chosen by a fixed-seed permutation of the batch columns (deterministic). The result is
    the mean over batches, clamped to the running min/max. Averaging keeps memory constant and is
    order-independent; it differs from the percentile of the pooled data when batches differ in
    size or distribution, which is acceptable for picking a clipping range.
    """

    def __init__(self, channel_dim: int | None, percentile: float = 99.99) -> None:
        super().__init__(channel_dim)
        if not 50.0 < float(percentile) <= 100.0:
            raise InputError(
                f"percentile={percentile!r} is outside (50, 100]",
                hint="use a value such as 99.9 or 99.99",
            )
        self.percentile = float(percentile)
        self._sum_lo: torch.Tensor | None = None  # (C,) float64
        self._sum_hi: torch.Tensor | None = None  # (C,) float64

    def _update_extra(self, flat: torch.Tensor) -> None:
        num_channels, n = flat.shape
        if n > PERCENTILE_MAX_SAMPLES:
            gen = torch.Generator(device="cpu").manual_seed(SAMPLING_SEED)
            idx = torch.randperm(n, generator=gen)[:PERCENTILE_MAX_SAMPLES].to(flat.device)
            flat = flat[:, idx]
        q = torch.tensor(
            [1.0 - self.percentile / 100.0, self.percentile / 100.0],
            dtype=flat.dtype,
            device=flat.device,
        )
        rows = max(1, QUANTILE_MAX_INPUT // flat.shape[1])
        parts = [torch.quantile(chunk, q, dim=1) for chunk in flat.split(rows, dim=0)]
        bounds = torch.cat(parts, dim=1).to(torch.float64)  # (2, C)
        assert bounds.shape == (2, num_channels)
        if self._sum_lo is None or self._sum_hi is None:
            self._sum_lo, self._sum_hi = bounds[0], bounds[1]
        else:
            self._sum_lo = self._sum_lo + bounds[0]
            self._sum_hi = self._sum_hi + bounds[1]

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch-averaged percentiles ``(lo, hi)``: ``(C,)`` or ``()`` float32, within min/max."""
        mn, mx = self._check_seen()
        assert self._sum_lo is not None and self._sum_hi is not None
        lo = (self._sum_lo / self.num_batches).to(torch.float32)
        hi = (self._sum_hi / self.num_batches).to(torch.float32)
        lo = torch.minimum(torch.maximum(lo, mn), mx)
        hi = torch.minimum(torch.maximum(hi, lo), mx)
        return self._shape_out(lo), self._shape_out(hi)


class MSEObserver(Observer):
    """Clipping range minimising the quantization MSE on a stored sample.

    Keeps the running min/max and the first up to 65536 elements per channel seen (in batch order,
    deterministic). :meth:`compute` tries ``ratio * (min, max)`` for ``ratio`` in
    ``linspace(0.3, 1.0, grid)`` and keeps, per channel, the ratio with the lowest mean squared
    error of ``fake_quantize`` on the sample (ties go to the larger ratio).
    """

    def __init__(
        self, channel_dim: int | None, num_bits: int, symmetric: bool, grid: int = 50
    ) -> None:
        super().__init__(channel_dim)
        qrange(num_bits, symmetric)  # validates num_bits
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise InputError(f"grid={grid!r} must be a positive integer", hint="use e.g. 50")
        self.num_bits = num_bits
        self.symmetric = symmetric
        self.grid = grid
        self._samples: list[torch.Tensor] = []  # each (C, n_i) float32
        self._num_samples = 0

    def _update_extra(self, flat: torch.Tensor) -> None:
        room = MSE_MAX_SAMPLES - self._num_samples
        if room <= 0:
            return
        take = flat[:, :room].clone()
        self._samples.append(take)
        self._num_samples += take.shape[1]

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE-optimal clipped ``(lo, hi)``: ``(C,)`` or ``()`` float32, within min/max."""
        mn, mx = self._check_seen()
        sample = torch.cat(self._samples, dim=1)  # (C, S)
        ratios = torch.linspace(0.3, 1.0, self.grid).flip(0).tolist()  # 1.0 first
        best_err = torch.full_like(mn, float("inf"))
        best_ratio = torch.ones_like(mn)
        for ratio in ratios:
            lo, hi = mn * ratio, mx * ratio
            scale, zp = choose_qparams(lo, hi, self.num_bits, self.symmetric)
            xq = fake_quantize(sample, scale[:, None], zp[:, None], self.num_bits, self.symmetric)
            err = (xq - sample).pow(2).mean(dim=1)  # (C,)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
        return self._shape_out(mn * best_ratio), self._shape_out(mx * best_ratio)


def make_observer(
    kind: str,
    channel_dim: int | None,
    num_bits: int,
    symmetric: bool,
    percentile: float = 99.99,
) -> Observer:
    """Observer by name: ``"minmax"``, ``"percentile"`` or ``"mse"``.

    Raises:
        InputError: unknown ``kind`` or invalid parameters.
    """
    if kind == "minmax":
        return MinMaxObserver(channel_dim)
    if kind == "percentile":
        return PercentileObserver(channel_dim, percentile=percentile)
    if kind == "mse":
        return MSEObserver(channel_dim, num_bits=num_bits, symmetric=symmetric)
    raise InputError(
        f"unknown observer kind {kind!r}; allowed: {', '.join(OBSERVER_KINDS)}",
        hint="pick one of the listed observer kinds",
    )
