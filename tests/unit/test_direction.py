"""Tests for gaqtool.quant.direction: grids, codebook coverage, FP16, angular error."""

from __future__ import annotations

import math

import pytest
import torch

from gaqtool.errors import InputError
from gaqtool.quant import direction
from gaqtool.quant.direction import (
    angular_error_deg,
    fibonacci_sphere,
    quantize_direction_codebook,
    quantize_direction_component,
    quantize_direction_fp16,
)

torch.set_num_threads(1)


def _unit(n: int, d: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, d, generator=g, dtype=dtype)
    return u / u.norm(dim=-1, keepdim=True)


def _grid_bound_deg(d: int, num_bits: int) -> float:
    """Max angle between u and its grid rounding: |q/n - u| <= sqrt(d)/(2n), so sin <= that."""
    n = 2 ** (num_bits - 1) - 1
    return math.degrees(math.asin(math.sqrt(d) / (2 * n)))


def test_angular_error_known_angles():
    a = torch.tensor([[1.0, 0.0, 0.0]] * 4, dtype=torch.float64)
    b = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-3.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=torch.float64
    )
    torch.testing.assert_close(
        angular_error_deg(a, b), torch.tensor([0.0, 90.0, 180.0, 45.0], dtype=torch.float64)
    )
    tiny = 1e-9
    c = torch.tensor([[math.cos(tiny), math.sin(tiny), 0.0]], dtype=torch.float64)
    torch.testing.assert_close(angular_error_deg(a[:1], c), torch.tensor([math.degrees(tiny)],
                               dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("d", [1, 3, 5, 7])
@pytest.mark.parametrize("num_bits", [2, 3, 4, 8])
def test_component_is_unit_on_grid_and_bounded(d, num_bits):
    u = _unit(5000, d, seed=d)
    q = quantize_direction_component(u, num_bits)
    assert q.shape == u.shape and q.dtype == u.dtype
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(5000, dtype=torch.float64))
    # Every nonzero component keeps the sign of u (rounding is monotone).
    assert ((q * u) >= 0).all()
    n = 2 ** (num_bits - 1) - 1
    if 2 * n > math.sqrt(d):  # no all-zero fallback possible, bound below 90 deg
        assert angular_error_deg(u, q).max() <= _grid_bound_deg(d, num_bits) + 1e-9


def test_component_angular_error_8_and_4_bits():
    u = _unit(200_000, 3, seed=1)
    err8 = angular_error_deg(u, quantize_direction_component(u, 8))
    err4 = angular_error_deg(u, quantize_direction_component(u, 4))
    # Measured (seed 1, 200k points): 8 bits mean 0.170 max 0.382 deg; 4 bits mean 3.08 max 6.95.
    assert err8.mean() < 0.2
    assert err8.max() <= _grid_bound_deg(3, 8) + 1e-9  # 0.391 deg
    assert 2.5 < err4.mean() < 3.6
    assert err4.max() <= _grid_bound_deg(3, 4) + 1e-9  # 7.11 deg


def test_component_all_zero_falls_back_to_signed_one_hot():
    # l=3 (d=7), 2 bits: grid {-1, 0, 1}; components below 0.5 round to 0.
    u = torch.tensor([[0.35, -0.42, 0.35, 0.35, 0.35, 0.35, 0.35]], dtype=torch.float64)
    u = u / u.norm()
    assert (u.abs() < 0.5).all()
    q = quantize_direction_component(u, 2)
    assert torch.equal(q, torch.tensor([[0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64))
    zero = quantize_direction_component(torch.zeros(2, 3), 8)
    assert torch.equal(zero, torch.tensor([[1.0, 0.0, 0.0]] * 2))


def test_component_rejects_bad_bits():
    for bits in (0, 1, 2.0, True):
        with pytest.raises(InputError):
            quantize_direction_component(torch.ones(3), bits)


def test_fibonacci_sphere_unit_deterministic_uniform():
    cb = fibonacci_sphere(256, dtype=torch.float64)
    assert cb.shape == (256, 3) and cb.dtype == torch.float64
    assert torch.equal(cb, fibonacci_sphere(256, dtype=torch.float64))
    assert fibonacci_sphere(256).dtype == torch.get_default_dtype()
    torch.testing.assert_close(cb.norm(dim=-1), torch.ones(256, dtype=torch.float64))
    assert cb.mean(dim=0).norm() < 0.01  # balanced around the origin
    dist = torch.cdist(cb, cb) + 10 * torch.eye(256, dtype=torch.float64)
    nearest = dist.min(dim=1).values
    # Uniform packing: nearest-neighbour distances within a factor ~2 of each other.
    assert nearest.max() / nearest.min() < 2.0
    with pytest.raises(InputError):
        fibonacci_sphere(0)


def test_codebook_256_angular_error():
    u = _unit(400_000, 3, seed=2)
    cb = fibonacci_sphere(256, dtype=torch.float64)
    q = quantize_direction_codebook(u, cb)
    assert q.shape == u.shape
    err = angular_error_deg(u, q)
    # Measured (seed 2, 400k points): mean 4.85 deg, max 9.71 deg. GAQ.md quotes ~12.7 deg.
    assert err.mean() < 6.0
    assert err.max() < 10.5
    # Every output is a codebook vector.
    assert (q[:1000, None, :] == cb[None]).all(dim=-1).any(dim=-1).all()


def test_codebook_is_nearest_and_chunking_is_exact(monkeypatch):
    u = _unit(3000, 3, seed=3).reshape(30, 100, 3)
    cb = fibonacci_sphere(64, dtype=torch.float64)
    brute = cb[(u.reshape(-1, 3) @ cb.T).argmax(dim=-1)].reshape(u.shape)
    assert torch.equal(quantize_direction_codebook(u, cb), brute)
    assert torch.equal(quantize_direction_codebook(u, cb, chunk_size=7), brute)
    monkeypatch.setattr(direction, "CODEBOOK_CHUNK_ELEMENTS", 64 * 5)
    assert torch.equal(quantize_direction_codebook(u, cb), brute)
    # float32 input with a float64 codebook: cast to the input's dtype.
    assert quantize_direction_codebook(u.float(), cb).dtype == torch.float32


def test_codebook_rejects_non_l1_and_bad_codebook():
    cb = fibonacci_sphere(16)
    with pytest.raises(InputError, match="l=1"):
        quantize_direction_codebook(torch.ones(4, 5), cb)
    with pytest.raises(InputError, match="codebook must be"):
        quantize_direction_codebook(torch.ones(4, 3), torch.ones(16, 5))
    with pytest.raises(InputError):
        quantize_direction_codebook(torch.ones(4, 3), torch.ones(0, 3))


@pytest.mark.parametrize("d", [3, 5, 7])
def test_fp16_error_tiny(d):
    u = _unit(50_000, d, seed=4)
    q = quantize_direction_fp16(u)
    assert q.dtype == u.dtype and q.shape == u.shape
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(50_000, dtype=torch.float64))
    err = angular_error_deg(u, q)
    # Measured for d=3: mean 0.006 deg, max 0.023 deg (float16 has an 11-bit significand).
    assert err.mean() < 0.01
    assert err.max() < 0.05
    assert err.max() > 0  # it does round
