"""Tests for gaqtool.metrics.localization: D(R) conventions, culprit ranking, quantized wrappers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaqtool.config import QuantConfig
from gaqtool.data.graph import make_batch
from gaqtool.data.spec import resolve_data
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.metrics.localization import irreps_modules, localize_equivariance, rotate_batch
from gaqtool.models.potential import DEFAULT_CONFIG, build_model
from gaqtool.quant.modules import QuantizedModule
from gaqtool.workflow import quantize_loaded

torch.set_num_threads(1)

TINY = dict(DEFAULT_CONFIG, num_channels=8, num_layers=2, lmax=2, num_heads=2, key_dim=4,
            species=[1, 6, 8], energy_shift={}, energy_scale=1.0, molecule="aspirin")
FP32_NOISE = 1e-4  # relative module error of a float32 model; measured ~1e-6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY).eval()


@pytest.fixture(scope="module")
def frames():
    return resolve_data("rmd17", "test", None, "aspirin").frames.subset(range(3))


def _break_symmetry(module: torch.nn.Module, value: float = 0.5):
    """Forward hook adding a constant (non-rotating) vector to every l=1 block of the output."""
    irreps = module.irreps_out
    shift = torch.zeros(irreps.dim)
    for (_, ir), sl in zip(irreps, irreps.slices()):
        if ir.l == 1:
            shift[sl] = value
    return module.register_forward_hook(lambda mod, args, out: out + shift)


def test_periodic_cells_rotate_with_their_atoms(model):
    """On periodic cells (edges across faces) every module of the FP32 model is equivariant at
    the float32 floor: rotate_batch turns the lattice vectors too (without that, errors are huge)."""
    from gaqtool.data.frames import Frames

    rng = np.random.default_rng(1)
    cell = np.array([[3.2, 0.0, 0.0], [0.4, 3.0, 0.0], [0.2, 0.3, 3.4]])
    numbers = np.array([6, 8, 6, 1])
    positions = rng.random((4, 3)) @ cell
    crystals = Frames([numbers], [positions], np.array([np.nan]), [np.zeros((4, 3))],
                      cells=[cell], pbc=[np.ones(3, dtype=bool)])
    rows = localize_equivariance(model, crystals, num_rotations=2, seed=0)
    assert rows and max(r["output_error"] for r in rows) < FP32_NOISE


def test_fp32_model_is_equivariant_in_every_module(model, frames):
    rows = localize_equivariance(model, frames, num_rotations=2, seed=0)
    paths = {r["path"] for r in rows}
    assert {"spherical_harmonics", "layers.0", "layers.0.pre_linear", "layers.0.convolution",
            "layers.0.gate", "layers.1.post_linear"} <= paths
    # conventions (D_from_matrix vs cartesian rotation, l=1 basis order) are right iff ~1e-6
    assert max(r["output_error"] for r in rows) < FP32_NOISE
    assert rows == sorted(rows, key=lambda r: r["introduced_error"], reverse=True)


@pytest.mark.parametrize("culprit", ["layers.0.post_linear", "layers.1.pre_linear"])
def test_injected_symmetry_break_is_ranked_first(model, frames, culprit):
    handle = _break_symmetry(model.get_submodule(culprit))  # registered before the probe hooks
    try:
        rows = localize_equivariance(model, frames, num_rotations=2, seed=0)
        lee = local_equivariance_error(model, frames, num_rotations=2, seed=0)
    finally:
        handle.remove()
    by_path = {r["path"]: r for r in rows}
    assert rows[0]["path"] == culprit
    assert rows[0]["introduced_error"] > 100 * FP32_NOISE
    # the error propagates downstream, but downstream modules do not get the blame
    layer = culprit.rsplit(".", 1)[0]
    assert by_path["layers.1.gate"]["output_error"] > 100 * FP32_NOISE
    assert by_path["layers.1.gate"]["introduced_error"] < 0.5 * rows[0]["introduced_error"]
    assert by_path[layer]["introduced_error"] < rows[0]["introduced_error"]
    assert lee["force_mean_mev_a"] > 1e-2  # and the model's forces are no longer equivariant


def test_hooks_are_removed(model, frames):
    localize_equivariance(model, frames.subset([0]), num_rotations=1, seed=0)
    for _, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_quantized_wrappers_replace_their_inner_module(model, frames):
    train = resolve_data("rmd17", "train", None, "aspirin").frames
    quantized, _ = quantize_loaded(model, QuantConfig.from_preset("w4a8", method="naive", calib_frames=4), train)
    modules = dict(irreps_modules(quantized))
    assert not any(p.endswith(".inner") for p in modules)
    assert isinstance(modules["layers.0.pre_linear"], QuantizedModule)
    rows = localize_equivariance(quantized, frames, num_rotations=2, seed=0)
    assert rows[0]["kind"].startswith("quantized ")
    assert rows[0]["introduced_error"] > 10 * FP32_NOISE  # naive rounding of l>0 features


def test_rotate_batch_keeps_edges_and_distances(model, frames):
    batch = make_batch(frames, [0, 1], model.cutoff)
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    rotated = rotate_batch(batch, rotation)
    assert torch.equal(rotated.edge_src, batch.edge_src) and torch.equal(rotated.edge_dst, batch.edge_dst)
    d0 = (batch.positions[batch.edge_src] - batch.positions[batch.edge_dst]).norm(dim=1)
    d1 = (rotated.positions[batch.edge_src] - rotated.positions[batch.edge_dst]).norm(dim=1)
    np.testing.assert_allclose(d1.numpy(), d0.numpy(), atol=1e-5)
    first = batch.molecule_index == 0
    np.testing.assert_allclose(rotated.positions[first].mean(0).numpy(),
                               batch.positions[first].mean(0).numpy(), atol=1e-4)
