"""GPTQ weight rounding: better layer outputs than rounding to nearest, same grid, still exactly
equivariant, independent of how the calibration molecules are oriented."""

from __future__ import annotations

import pytest
import torch

from gaqtool.config import QuantConfig, WeightRounding
from gaqtool.errors import InputError
from gaqtool.metrics.equivariance import haar_rotations, local_equivariance_error, rotate_frames
from gaqtool.quant.gptq import gptq_round
from gaqtool.quant.modules import QuantizedModule
from gaqtool.quant.weights import quantize_parameter
from gaqtool.workflow import quantize_loaded
from tests.conftest import make_tiny_model


def _correlated_inputs(n: int, dim: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator) * torch.logspace(0, -2, dim)
    return torch.randn(n, dim, generator=generator) @ mixing


@pytest.mark.parametrize("bits,group_size,clip", [(4, None, False), (4, None, True), (2, None, False), (4, 8, True)])
def test_gptq_lowers_the_output_error_of_a_layer_on_its_own_grid(bits, group_size, clip):
    linear = torch.nn.Linear(24, 16, bias=False)
    torch.nn.init.normal_(linear.weight, generator=torch.Generator().manual_seed(1))
    x = _correlated_inputs(500, 24, seed=2)
    nearest, nearest_scales = quantize_parameter(linear, "weight", bits, group_size, False, clip_search=clip)
    weight = linear.weight.detach().t()  # (in, out), the layout GPTQ works in
    values, scales = gptq_round(weight, x.t() @ x, bits, group_size, clip)
    torch.testing.assert_close(scales, nearest_scales)  # same grid
    assert values.abs().max() <= 2 ** (bits - 1) - 1
    rows = torch.arange(24) // (group_size or 24)
    per_row_scale = scales.reshape(-1, 16)[rows]
    error_gptq = (x @ (values.float() * per_row_scale - weight)).pow(2).sum()
    error_nearest = (x @ (nearest.t().float() * per_row_scale - weight)).pow(2).sum()
    assert error_gptq < 0.8 * error_nearest
    assert (values != nearest.t()).any()


def test_gptq_zeroes_weights_of_inputs_never_seen():
    weight = torch.randn(6, 3)
    x = torch.randn(50, 6)
    x[:, 2] = 0.0
    values, _ = gptq_round(weight, x.t() @ x, 4, None, False)
    assert (values[2] == 0).all() and (values[[0, 1, 3]] != 0).any()


@pytest.fixture(scope="module")
def fp32():
    return make_tiny_model().eval()


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith("weight_int")}


def test_gptq_changes_the_integers_of_the_supported_layers_only(fp32, train_frames):
    frames = train_frames.subset(range(8))
    nearest, _ = quantize_loaded(fp32, QuantConfig.from_preset("w4", weight_rounding="nearest", calib_frames=8), frames)
    gptq, plan = quantize_loaded(fp32, QuantConfig.from_preset("w4", calib_frames=8), frames)
    a, b = _weights(nearest), _weights(gptq)
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    # the plan records only the modules whose rounding differs from the config's (gptq)
    rounded = {p for p, e in plan.entries.items() if e.get("weight_bits") and e.get("rounding", "gptq") == "gptq"}
    assert rounded and {k.removesuffix(".weight_int") for k in changed} <= rounded
    assert len(changed) >= len(rounded) // 2
    kinds = {plan.entries[p]["kind"] for p in rounded}
    assert kinds <= {"o3.Linear", "nn.Linear", "e3nn.FullyConnectedNet.layer"} and "o3.Linear" in kinds
    for path, module in gptq.named_modules():  # same grid: scales of nearest rounding
        if isinstance(module, QuantizedModule) and module.weight_names:
            torch.testing.assert_close(module.weight_scale, nearest.get_submodule(path).weight_scale)


def test_gptq_weight_only_model_is_exactly_equivariant(fp32, train_frames, test_frames):
    frames = test_frames.subset(range(4))
    model, _ = quantize_loaded(fp32, QuantConfig.from_preset("w4", calib_frames=8), train_frames.subset(range(8)))
    floor = local_equivariance_error(fp32, frames, 2, seed=0)
    lee = local_equivariance_error(model, frames, 2, seed=0)
    assert lee["force_mean_mev_a"] <= 3 * floor["force_mean_mev_a"] + 1e-4


def test_gptq_does_not_depend_on_the_orientation_of_the_calibration_molecules(fp32, train_frames):
    frames = train_frames.subset(range(8))
    config = QuantConfig.from_preset("w4", calib_frames=8)
    plain = _weights(quantize_loaded(fp32, config, frames)[0])
    rotated = _weights(quantize_loaded(fp32, config, rotate_frames(frames, haar_rotations(1, seed=5)[0]))[0])
    assert plain.keys() == rotated.keys()
    assert all(torch.equal(plain[k], rotated[k]) for k in plain)


def test_weight_rounding_in_config_files():
    config = QuantConfig.from_preset("w4a8")
    assert config.weight_rounding == WeightRounding.GPTQ
    assert QuantConfig.from_dict(config.to_dict()) == config
    old = config.to_dict()
    del old["weight_rounding"]  # files written before 0.1.2 rounded to nearest
    assert QuantConfig.from_dict(old).weight_rounding == WeightRounding.NEAREST
    with pytest.raises(InputError, match="weight-rounding"):
        QuantConfig.from_preset("w4a8", weight_rounding="stochastic")
