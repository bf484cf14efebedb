"""Tests of gaqtool.quant.observers: min/max, percentile and MSE calibration statistics."""

from __future__ import annotations

import pytest
import torch

from gaqtool.errors import DataError, InputError
from gaqtool.quant.observers import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    make_observer,
)
from gaqtool.quant.primitives import choose_qparams, fake_quantize

torch.set_num_threads(1)


def _batches(seed: int = 0, n: int = 4, shape=(50, 6)) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen) * (i + 1) for i in range(n)]


def test_minmax_per_tensor_matches_amin_amax():
    batches = _batches()
    obs = MinMaxObserver(channel_dim=None)
    for b in batches:
        obs.update(b)
    lo, hi = obs.compute()
    allx = torch.cat(batches)
    assert lo.shape == () and hi.shape == ()
    assert torch.equal(lo, allx.amin()) and torch.equal(hi, allx.amax())
    assert obs.num_batches == 4


@pytest.mark.parametrize("channel_dim", [1, -1])
def test_minmax_per_channel_matches_amin_amax(channel_dim):
    batches = _batches()
    obs = MinMaxObserver(channel_dim=channel_dim)
    for b in batches:
        obs.update(b)
    lo, hi = obs.compute()
    allx = torch.cat(batches)
    assert lo.shape == (6,) and hi.shape == (6,)
    assert torch.equal(lo, allx.amin(0)) and torch.equal(hi, allx.amax(0))


def test_minmax_channel_axis_in_middle_of_3d():
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(4, 5, 7, generator=gen) for _ in range(3)]
    obs = MinMaxObserver(channel_dim=1)
    for b in batches:
        obs.update(b)
    lo, hi = obs.compute()
    allx = torch.cat(batches)
    assert torch.equal(lo, allx.amin(dim=(0, 2))) and torch.equal(hi, allx.amax(dim=(0, 2)))


def test_channel_count_change_and_bad_axis_raise():
    obs = MinMaxObserver(channel_dim=1)
    obs.update(torch.randn(3, 4))
    with pytest.raises(InputError):
        obs.update(torch.randn(3, 5))
    with pytest.raises(InputError):
        MinMaxObserver(channel_dim=2).update(torch.randn(3, 4))


def test_no_data_nonfinite_and_empty_batches():
    with pytest.raises(DataError):
        MinMaxObserver(None).compute()
    with pytest.raises(DataError):
        MinMaxObserver(None).update(torch.tensor([1.0, float("nan")]))
    obs = MinMaxObserver(channel_dim=1)
    obs.update(torch.zeros(0, 3))
    assert obs.num_batches == 0
    obs.update(torch.ones(2, 3))
    assert obs.num_batches == 1


@pytest.mark.parametrize("channel_dim", [None, 1])
def test_percentile_within_minmax(channel_dim):
    batches = _batches(seed=1, shape=(500, 6))
    pct = PercentileObserver(channel_dim, percentile=99.0)
    mm = MinMaxObserver(channel_dim)
    for b in batches:
        pct.update(b)
        mm.update(b)
    plo, phi = pct.compute()
    mlo, mhi = mm.compute()
    assert plo.shape == mlo.shape and phi.shape == mhi.shape
    assert bool((phi <= mhi).all()) and bool((plo >= mlo).all())
    assert bool((phi < mhi).all())  # 99th percentile of 500 normals is strictly inside
    # average of per-batch percentiles
    q = torch.tensor([0.01, 0.99])
    if channel_dim is None:
        per = torch.stack([torch.quantile(b.reshape(-1), q) for b in batches])  # (4, 2)
        assert torch.allclose(phi, per[:, 1].mean(), rtol=1e-5)
        assert torch.allclose(plo, per[:, 0].mean(), rtol=1e-5)


def test_percentile_nonnegative_inputs_and_bad_percentile():
    obs = PercentileObserver(channel_dim=None, percentile=99.9)
    gen = torch.Generator().manual_seed(2)
    obs.update(torch.randn(1000, 3, generator=gen).norm(dim=1))
    lo, hi = obs.compute()
    assert float(lo) >= 0.0 and float(hi) > float(lo)
    with pytest.raises(InputError):
        PercentileObserver(None, percentile=120.0)


def test_percentile_large_batch_is_sampled_deterministically():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2**20 + 1000, generator=gen)
    a, b = PercentileObserver(None, 99.0), PercentileObserver(None, 99.0)
    a.update(x)
    b.update(x)
    assert torch.equal(a.compute()[1], b.compute()[1])
    assert abs(float(a.compute()[1]) - 2.326) < 0.02


def _mse(x: torch.Tensor, lo, hi, num_bits: int, symmetric: bool) -> float:
    scale, zp = choose_qparams(lo, hi, num_bits, symmetric)
    return float((fake_quantize(x, scale, zp, num_bits, symmetric) - x).pow(2).mean())


@pytest.mark.parametrize("symmetric", [True, False])
def test_mse_observer_beats_minmax_on_heavy_tails(symmetric):
    gen = torch.Generator().manual_seed(5)
    # Student-t with 4 degrees of freedom: z / sqrt(chi2_4 / 4); 4 batches of 4000 samples
    z = torch.randn(4, 4000, generator=gen)
    chi2 = torch.randn(4, 4000, 4, generator=gen).pow(2).sum(-1)
    data = z / (chi2 / 4).sqrt()
    mse_obs = MSEObserver(channel_dim=None, num_bits=4, symmetric=symmetric)
    mm = MinMaxObserver(channel_dim=None)
    for b in data:
        mse_obs.update(b)
        mm.update(b)
    lo, hi = mse_obs.compute()
    mlo, mhi = mm.compute()
    assert float(hi) < float(mhi)  # it clips
    err_mse = _mse(data.reshape(-1), lo, hi, 4, symmetric)
    err_mm = _mse(data.reshape(-1), mlo, mhi, 4, symmetric)
    assert err_mse < 0.5 * err_mm, (err_mse, err_mm)


def test_mse_observer_per_channel_shapes_and_nonnegative():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(300, 5, 3, generator=gen).norm(dim=-1)  # (300, 5) norms >= 0
    obs = MSEObserver(channel_dim=1, num_bits=4, symmetric=False, grid=20)
    obs.update(x)
    lo, hi = obs.compute()
    assert lo.shape == (5,) and hi.shape == (5,)
    assert bool((lo >= 0).all()) and bool((lo <= x.amin(0)).all()) and bool((hi > 0).all())
    assert bool((hi <= x.amax(0)).all())


def test_make_observer():
    assert isinstance(make_observer("minmax", None, 8, True), MinMaxObserver)
    p = make_observer("percentile", 0, 8, True, percentile=99.5)
    assert isinstance(p, PercentileObserver) and p.percentile == 99.5
    m = make_observer("mse", 1, 4, False)
    assert isinstance(m, MSEObserver) and m.num_bits == 4 and not m.symmetric
    with pytest.raises(InputError):
        make_observer("histogram", None, 8, True)
