"""Tests for gaqtool.irreps: layouts, exact round trips, rotation-invariant block norms."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from hypothesis import given, settings
from hypothesis import strategies as st

from gaqtool.errors import InputError
from gaqtool.irreps import block_norms, merge_blocks, scalar_mask, split_blocks

torch.set_num_threads(1)

IRREPS = o3.Irreps("3x0e + 2x1o + 4x2e")
LAYOUTS = ("mul_ir", "ir_mul")


def _rotate(x: torch.Tensor, irreps: o3.Irreps, rot: torch.Tensor) -> torch.Tensor:
    """Rotate mul_ir features x (n, irreps.dim) by per-sample rotations rot (n, 3, 3)."""
    d = irreps.D_from_matrix(rot)  # (n, dim, dim)
    return torch.einsum("nij,nj->ni", d, x)


def _to_layout(x: torch.Tensor, irreps: o3.Irreps, layout: str) -> torch.Tensor:
    return merge_blocks(split_blocks(x, irreps, "mul_ir"), irreps, layout)


@st.composite
def irreps_and_shape(draw):
    chunks = []
    for _ in range(draw(st.integers(1, 4))):
        mul = draw(st.integers(0, 4))
        l = draw(st.integers(0, 3))  # noqa: E741
        p = draw(st.sampled_from(["e", "o"]))
        chunks.append(f"{mul}x{l}{p}")
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    return o3.Irreps("+".join(chunks)), lead


def test_split_mul_ir_matches_e3nn_layout():
    x = torch.arange(2 * IRREPS.dim, dtype=torch.float64).reshape(2, IRREPS.dim)
    blocks = split_blocks(x, IRREPS)
    assert [tuple(b.shape) for b in blocks] == [(2, 3, 1), (2, 2, 3), (2, 4, 5)]
    for block, (mul, ir), sl in zip(blocks, IRREPS, IRREPS.slices()):
        for i in range(mul):
            for m in range(ir.dim):
                assert torch.equal(block[:, i, m], x[:, sl.start + i * ir.dim + m])


def test_split_ir_mul_is_transposed():
    x = torch.arange(2 * IRREPS.dim, dtype=torch.float64).reshape(2, IRREPS.dim)
    blocks = split_blocks(x, IRREPS, "ir_mul")
    assert [tuple(b.shape) for b in blocks] == [(2, 3, 1), (2, 2, 3), (2, 4, 5)]
    for block, (mul, ir), sl in zip(blocks, IRREPS, IRREPS.slices()):
        for i in range(mul):
            for m in range(ir.dim):
                assert torch.equal(block[:, i, m], x[:, sl.start + m * mul + i])


@settings(max_examples=40, deadline=None)
@given(irreps_and_shape(), st.sampled_from(LAYOUTS))
def test_split_merge_round_trip(case, layout):
    irreps, lead = case
    x = torch.randn(*lead, irreps.dim, dtype=torch.float64)
    blocks = split_blocks(x, irreps, layout)
    assert len(blocks) == len(irreps)
    for block, (mul, ir) in zip(blocks, irreps):
        assert block.shape == (*lead, mul, ir.dim)
    assert torch.equal(merge_blocks(blocks, irreps, layout), x)
    again = split_blocks(merge_blocks(blocks, irreps, layout), irreps, layout)
    assert all(torch.equal(a, b) for a, b in zip(again, blocks))


@settings(max_examples=25, deadline=None)
@given(irreps_and_shape())
def test_layouts_hold_the_same_blocks(case):
    irreps, lead = case
    x = torch.randn(*lead, irreps.dim)
    x_ir_mul = _to_layout(x, irreps, "ir_mul")
    for a, b in zip(split_blocks(x, irreps), split_blocks(x_ir_mul, irreps, "ir_mul")):
        assert torch.equal(a, b)
    # A chunk with mul > 1 and l > 0 really is permuted between the layouts.
    if any(mul > 1 and ir.l > 0 for mul, ir in irreps):
        assert not torch.equal(x, x_ir_mul)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_norms_match_e3nn_norm(dtype):
    torch.manual_seed(0)
    x = torch.randn(7, IRREPS.dim, dtype=dtype)
    expected = o3.Norm(IRREPS).to(dtype)(x)
    got = block_norms(x, IRREPS)
    assert got.shape == (7, IRREPS.num_irreps)
    torch.testing.assert_close(got, expected)
    got_ir_mul = block_norms(_to_layout(x, IRREPS, "ir_mul"), IRREPS, "ir_mul")
    torch.testing.assert_close(got_ir_mul, expected)
    # l=0 norms are |x|.
    torch.testing.assert_close(got[:, :3], x[:, :3].abs())


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_block_norms_rotation_invariant(layout, dtype, rtol):
    torch.manual_seed(1)
    irreps = o3.Irreps("3x0e + 2x1o + 4x2e + 2x3o + 1x1e")
    x = torch.randn(64, irreps.dim, dtype=dtype)
    rot = o3.rand_matrix(64, dtype=dtype)
    xr = _rotate(x, irreps, rot)
    assert (xr - x).abs().max() > 0.1  # the rotation does move the features
    n = block_norms(_to_layout(x, irreps, layout), irreps, layout)
    nr = block_norms(_to_layout(xr, irreps, layout), irreps, layout)
    torch.testing.assert_close(nr, n, rtol=rtol, atol=rtol)


def test_block_norms_eps_and_zero_gradient():
    x = torch.zeros(2, IRREPS.dim, dtype=torch.float64, requires_grad=True)
    n = block_norms(x, IRREPS)
    assert torch.equal(n, torch.zeros(2, IRREPS.num_irreps, dtype=torch.float64))
    n.sum().backward()
    assert torch.isfinite(x.grad).all()
    clamped = block_norms(x.detach(), IRREPS, eps=1e-3)
    assert torch.equal(clamped, torch.full_like(clamped, 1e-3))
    y = torch.ones(1, IRREPS.dim, dtype=torch.float64)
    assert torch.equal(block_norms(y, IRREPS, eps=1e-3), block_norms(y, IRREPS))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scalar_mask(layout):
    irreps = o3.Irreps("2x1o + 3x0e + 1x2e + 2x0o")
    mask = scalar_mask(irreps, layout)
    assert mask.dtype == torch.bool and mask.shape == (irreps.dim,)
    expected = torch.tensor([False] * 6 + [True] * 3 + [False] * 5 + [True] * 2)
    assert torch.equal(mask, expected)
    x = torch.randn(irreps.dim)
    blocks = split_blocks(x, irreps, layout)
    scalars = torch.cat([b.reshape(-1) for b, (_, ir) in zip(blocks, irreps) if ir.l == 0])
    assert torch.equal(x[mask], scalars)


def test_wrong_feature_dim_raises():
    with pytest.raises(InputError, match="irreps.dim = 29"):
        split_blocks(torch.zeros(4, 28), IRREPS)
    with pytest.raises(InputError):
        block_norms(torch.zeros(4, 30), IRREPS)
    with pytest.raises(InputError):
        split_blocks(torch.tensor(1.0), IRREPS)


def test_unknown_layout_raises():
    x = torch.zeros(IRREPS.dim)
    for call in (
        lambda: split_blocks(x, IRREPS, "irmul"),
        lambda: merge_blocks(split_blocks(x, IRREPS), IRREPS, "mul-ir"),
        lambda: block_norms(x, IRREPS, "MUL_IR"),
        lambda: scalar_mask(IRREPS, "xyz"),
    ):
        with pytest.raises(InputError, match="allowed: mul_ir, ir_mul"):
            call()


def test_merge_rejects_bad_blocks():
    blocks = split_blocks(torch.zeros(2, IRREPS.dim), IRREPS)
    with pytest.raises(InputError, match="3 chunks"):
        merge_blocks(blocks[:2], IRREPS)
    with pytest.raises(InputError, match="does not fit"):
        merge_blocks([blocks[0], blocks[2], blocks[1]], IRREPS)
    with pytest.raises(InputError, match="leading shape"):
        merge_blocks([blocks[0], blocks[1][:1], blocks[2]], IRREPS)


def test_invalid_irreps_raises():
    with pytest.raises(InputError, match="invalid irreps"):
        scalar_mask("3x1q")
