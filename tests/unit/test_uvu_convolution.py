"""The fused uvu convolution against e3nn's TensorProduct + scatter-sum: values, first
derivatives (node features, weights, and edge vectors through the spherical harmonics) and a
second derivative, for every path with l <= 3 and both parities; C kernels and eager path."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import warnings

import pytest
import torch
from e3nn import o3

from gaqtool.kernels import native
from gaqtool.kernels.uvu_convolution import UvuConvolution, edge_index, uvu_tensor_product

# (node irreps, edge irreps): all l <= 3 with both parities, against parity-aware harmonics
# (SH parity (-1)^l) and against SevenNet's parity-free harmonics (all 'e')
CASES = [("3x0e+2x0o+2x1o+3x1e+2x2e+2x2o+2x3o+2x3e", "1x0e+1x1o+1x2e+1x3o"),
         ("4x0e+2x1o+2x1e+3x2o+2x3e", "1x0e+1x1e+1x2e+1x3e"),
         # channel counts past one vector block (16) and not a multiple of it
         ("20x0e+17x1o+33x2e+16x3o", "1x0e+1x1o+1x2e+1x3o")]
LMAX = 3


def _graph(num_nodes: int, num_edges: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    dst = torch.randint(0, num_nodes, (num_edges,), generator=generator)
    return src, dst, generator


def _inputs(tp: o3.TensorProduct, num_nodes=9, num_edges=40, seed=0):
    src, dst, generator = _graph(num_nodes, num_edges, seed)
    x = torch.randn(num_nodes, tp.irreps_in1.dim, generator=generator, requires_grad=True)
    vectors = torch.randn(num_edges, 3, generator=generator, requires_grad=True)
    w = torch.randn(num_edges, tp.weight_numel, generator=generator, requires_grad=True)
    return x, vectors, w, src, dst


def _both(tp, x, vectors, w, src, dst, use_native):
    """(e3nn reference, fused) outputs (N, irreps_out.dim) from the same leaves."""
    def harmonics():  # one graph per output, so that each can be differentiated on its own
        return o3.spherical_harmonics(tp.irreps_in2, vectors, normalize=True, normalization="component")

    reference = torch.zeros(x.shape[0], tp.irreps_out.dim).index_add(0, dst, tp(x[src], harmonics(), w))
    conv = UvuConvolution.from_tensor_product(tp, use_native=use_native)
    return reference, conv(x, harmonics(), w, edge_index(src, dst, x.shape[0]))


@pytest.fixture(params=["auto", "never"], ids=["c-kernels", "eager"])
def use_native(request):
    if request.param == "auto" and native.native_library() is None:
        pytest.skip(f"C kernels unavailable here: {native.native_unavailable_reason()}")
    return request.param


@pytest.mark.parametrize("irreps_x, irreps_sh", CASES)
def test_values_and_first_derivatives_equal_e3nn(irreps_x, irreps_sh, use_native):
    tp = uvu_tensor_product(irreps_x, irreps_sh, LMAX)
    assert {ins.i_out for ins in tp.instructions} == set(range(len(tp.irreps_out)))
    assert max(ir.l for _, ir in tp.irreps_out) == 3 and {ir.p for _, ir in tp.irreps_out} == {1, -1}
    x, vectors, w, src, dst = _inputs(tp)
    reference, fused = _both(tp, x, vectors, w, src, dst, use_native)
    scale = reference.abs().max()
    assert scale > 1.0
    assert (fused - reference).abs().max() < 2e-6 * scale
    cotangent = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, (x, vectors, w), cotangent)
    got = torch.autograd.grad(fused, (x, vectors, w), cotangent)
    for name, e, g in zip(("node features", "edge vectors", "weights"), expected, got):
        assert (g - e).abs().max() < 1e-5 * e.abs().max(), name


@pytest.mark.parametrize("irreps_x, irreps_sh", CASES[:1])
def test_second_derivative_equals_e3nn(irreps_x, irreps_sh, use_native):
    """Double backward, as training on forces needs: d/d(leaves) of |dL/d(x, vectors, w)|^2."""
    tp = uvu_tensor_product(irreps_x, irreps_sh, LMAX)
    x, vectors, w, src, dst = _inputs(tp, seed=1)
    results = []
    for out in _both(tp, x, vectors, w, src, dst, use_native):
        first = torch.autograd.grad(out.square().sum(), (x, vectors, w), create_graph=True)
        penalty = sum(g.square().sum() for g in first)
        results.append(torch.autograd.grad(penalty, (x, vectors, w)))
    for e, g in zip(*results):
        assert e.abs().max() > 0
        assert (g - e).abs().max() < 1e-5 * e.abs().max()


def test_isolated_nodes_and_no_edges(use_native):
    tp = uvu_tensor_product("2x0e+2x1o", "1x0e+1x1o", LMAX)
    conv = UvuConvolution.from_tensor_product(tp, use_native=use_native)
    x = torch.randn(4, tp.irreps_in1.dim)
    sh, w = torch.randn(0, tp.irreps_in2.dim), torch.randn(0, tp.weight_numel)
    empty = torch.zeros(0, dtype=torch.long)
    assert torch.equal(conv(x, sh, w, edge_index(empty, empty, 4)), torch.zeros(4, tp.irreps_out.dim))
    src, dst = torch.tensor([0, 0]), torch.tensor([1, 1])  # nodes 0, 2 and 3 receive nothing
    out = conv(x, torch.randn(2, tp.irreps_in2.dim), torch.randn(2, tp.weight_numel), edge_index(src, dst, 4))
    assert out[[0, 2, 3]].abs().max() == 0 and out[1].abs().max() > 0


def test_rejects_products_it_does_not_implement():
    shared = o3.TensorProduct("2x0e", "1x0e", "2x0e", [(0, 0, 0, "uvu", True)])
    with pytest.raises(ValueError, match="per-edge weights"):
        UvuConvolution.from_tensor_product(shared)
    uvw = o3.TensorProduct("2x0e", "1x0e", "3x0e", [(0, 0, 0, "uvw", True)],
                           shared_weights=False, internal_weights=False)
    with pytest.raises(ValueError, match="uvu"):
        UvuConvolution.from_tensor_product(uvw)


def test_falls_back_to_pytorch_with_a_warning_without_a_compiler(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    native.native_library.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="no C compiler"):
            assert native.native_library() is None
        tp = uvu_tensor_product("2x0e+2x1o", "1x0e+1x1o", LMAX)
        x, vectors, w, src, dst = _inputs(tp)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # warned once, not on every call
            reference, fused = _both(tp, x, vectors, w, src, dst, "auto")
        assert (fused - reference).abs().max() < 2e-6 * reference.abs().max()
    finally:
        native.native_library.cache_clear()


@pytest.mark.parametrize("flags", ["-mno-avx512f", "-mno-avx512f -mno-avx2"], ids=["avx2", "portable"])
def test_other_builds_equal_e3nn_too(flags):
    """The C kernels as other CPUs build them pass the same checks: 8-lane AVX2 intrinsics
    (``-mno-avx512f`` on an AVX-512 machine) and the portable loops (neither)."""
    if native.native_library() is None:
        pytest.skip(f"C kernels unavailable here: {native.native_unavailable_reason()}")
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("-mno-avx512f is an x86 flag")
    if flags == "-mno-avx512f" and "avx512f" not in native._cpu_flags().split():
        pytest.skip("no AVX-512 here: the native build is this one, and the tests above ran it")
    env = dict(os.environ, GAQTOOL_KERNEL_FLAGS=flags)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                             "-k", "c-kernels and not other_builds"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]
