"""Tests of gaqtool.quant.primitives: qparams, quantize/dequantize bounds, STE/LSQ, SQNR."""

from __future__ import annotations

import math

import pytest
import torch

from gaqtool.errors import InputError
from gaqtool.quant.primitives import (
    choose_qparams,
    dequantize,
    fake_quantize,
    fake_quantize_lsq,
    qrange,
    quantize,
    sqnr_db,
)

torch.set_num_threads(1)

DTYPES = [torch.float32, torch.float64]


def test_qrange():
    assert qrange(8, True) == (-127, 127)
    assert qrange(8, False) == (0, 255)
    assert qrange(4, True) == (-7, 7)
    assert qrange(4, False) == (0, 15)
    assert qrange(2, True) == (-1, 1)
    with pytest.raises(InputError):
        qrange(1, True)
    with pytest.raises(InputError):
        qrange(0, False)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("num_bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_error_bounded_by_half_scale(symmetric, num_bits, dtype):
    gen = torch.Generator().manual_seed(num_bits)
    x = torch.randn(64, 33, generator=gen, dtype=dtype) * 3.0 + 0.5
    x_min, x_max = x.amin(dim=1), x.amax(dim=1)  # per-channel (64,)
    scale, zp = choose_qparams(x_min, x_max, num_bits, symmetric)
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert scale.shape == (64,) and zp.shape == (64,)
    q = quantize(x, scale[:, None], zp[:, None], num_bits, symmetric)
    qmin, qmax = qrange(num_bits, symmetric)
    assert q.dtype == torch.int32
    assert int(q.min()) >= qmin and int(q.max()) <= qmax
    xr = dequantize(q, scale[:, None], zp[:, None])
    assert xr.dtype == torch.float32
    err = (xr.to(torch.float64) - x.to(torch.float64)).abs()
    bound = scale[:, None].to(torch.float64) / 2 * (1 + 1e-5) + 1e-6
    assert bool((err <= bound).all()), float((err - bound).max())


def test_symmetric_zero_point_is_zero_and_scale_matches():
    x_min = torch.tensor([-2.0, -0.5, 0.0])
    x_max = torch.tensor([1.0, 4.0, 0.0])
    scale, zp = choose_qparams(x_min, x_max, 8, True)
    assert torch.equal(zp, torch.zeros(3, dtype=torch.int32))
    assert torch.allclose(scale[:2], torch.tensor([2.0 / 127, 4.0 / 127]))
    assert float(scale[2]) > 0.0  # clamped by eps


def test_asymmetric_zero_is_exact_and_nonnegative_range():
    scale, zp = choose_qparams(torch.tensor(0.0), torch.tensor(5.0), 8, False)
    assert scale.dim() == 0 and int(zp) == 0
    assert math.isclose(float(scale), 5.0 / 255, rel_tol=1e-6)
    scale, zp = choose_qparams(torch.tensor(1.0), torch.tensor(3.0), 4, False)  # extended to 0
    assert int(zp) == 0 and math.isclose(float(scale), 3.0 / 15, rel_tol=1e-6)
    scale, zp = choose_qparams(torch.tensor(-1.3), torch.tensor(2.1), 8, False)
    q0 = quantize(torch.tensor(0.0), scale, zp, 8, False)
    assert float(dequantize(q0, scale, zp)) == 0.0


def test_choose_qparams_rejects_bad_bounds():
    with pytest.raises(InputError):
        choose_qparams(torch.tensor(1.0), torch.tensor(0.0), 8, True)
    with pytest.raises(InputError):
        choose_qparams(torch.zeros(3), torch.ones(2), 8, True)


def test_quantize_clamps_outside_range():
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), 4, True)
    q = quantize(torch.tensor([-10.0, 10.0]), scale, zp, 4, True)
    assert q.tolist() == [-7, 7]


@pytest.mark.parametrize("dtype", DTYPES)
def test_fake_quantize_forward_and_ste_gradient(dtype):
    x = torch.linspace(-0.9, 0.9, 101, dtype=dtype, requires_grad=True)
    scale, zp = choose_qparams(torch.tensor(-1.0), torch.tensor(1.0), 4, True)
    y = fake_quantize(x, scale, zp, 4, True)
    assert y.dtype == dtype and y.shape == x.shape
    expected = dequantize(quantize(x.detach(), scale, zp, 4, True), scale, zp).to(dtype)
    assert torch.allclose(y.detach(), expected, atol=1e-6)
    assert not torch.equal(y.detach(), x.detach())  # it really quantizes
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_lsq_forward_matches_and_scale_gets_gradient():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 16, generator=gen, requires_grad=True)
    s0, zp = choose_qparams(x.detach().amin(1) * 0.7, x.detach().amax(1) * 0.7, 4, True)
    scale = s0[:, None].clone().requires_grad_(True)
    y = fake_quantize_lsq(x, scale, zp[:, None], 4, True)
    ref = fake_quantize(x.detach(), s0[:, None], zp[:, None], 4, True)
    assert torch.allclose(y.detach(), ref, atol=1e-6)
    y.pow(2).sum().backward()
    assert scale.grad is not None and scale.grad.shape == (8, 1)
    assert bool((scale.grad.abs() > 0).any())
    inside = (x.detach() / s0[:, None]).abs() < 7
    assert torch.allclose(x.grad[inside], 2 * y.detach()[inside])  # STE: dy/dx = 1 inside
    assert bool((x.grad[~inside] == 0).all())  # clamped: no gradient outside


def test_lsq_scale_gradient_value_single_element():
    # one element, v = x/s = 1.3 inside: d out / d s = (round(v) - v) * g, g = 1/sqrt(1 * 7)
    x = torch.tensor([1.3])
    scale = torch.tensor(1.0, requires_grad=True)
    fake_quantize_lsq(x, scale, torch.tensor(0), 4, True).sum().backward()
    assert math.isclose(float(scale.grad), (1.0 - 1.3) / math.sqrt(7), rel_tol=1e-5)


def test_sqnr_per_channel_8_and_4_bits():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(64, 128, generator=gen)
    results = {}
    for num_bits in (8, 4):
        scale, zp = choose_qparams(w.amin(1), w.amax(1), num_bits, True)
        wq = dequantize(quantize(w, scale[:, None], zp[:, None], num_bits, True), scale[:, None],
                        zp[:, None])
        results[num_bits] = sqnr_db(w, wq)
    assert results[8] > 35.0, results
    assert results[4] > 15.0, results
    assert results[8] > results[4] + 20.0


def test_sqnr_edge_cases():
    x = torch.ones(4)
    assert sqnr_db(x, x) == math.inf
    assert math.isclose(sqnr_db(x, x * 0.9), 20.0, rel_tol=1e-5)
    with pytest.raises(InputError):
        sqnr_db(torch.ones(3), torch.ones(4))
