"""The error-budget search: sensitive modules first, nothing when met, impossible budgets,
determinism, and the bit map through QuantConfig overrides, the file and QAT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gaqtool.config import QuantConfig
from gaqtool.errors import BudgetError, InputError
from gaqtool.io.safetensors_io import load_quantized, read_header, save_quantized
from gaqtool.metrics.accuracy import deviation_metrics, predict
from gaqtool.quant.bitmap import bit_map
from gaqtool.quant.budget import parse_budget
from gaqtool.quant.mixed_precision import search_bit_map
from gaqtool.workflow import quantize_loaded
from tests.conftest import make_tiny_model

CONFIG = QuantConfig.from_preset("w4a8", calib_frames=3, weight_rounding="nearest")  # fast: no GPTQ
SENSITIVE = "layers.0.radial.hidden.1"  # 4-bit in the tiny model (fan-in 64); not first untouched


@pytest.fixture(scope="module")
def frames(train_frames, test_frames):
    """(calibration, validation): disjoint parts of the shipped train sample."""
    return train_frames.subset(range(3)), train_frames.subset(range(90, 94))


def _sensitive_model() -> torch.nn.Module:
    """The tiny model with one module whose 4-bit rounding is ruinous, and nothing else
    changed but one hidden unit: the unit before it is switched off (SiLU(0) = 0) and its
    weights from that unit get an outlier, which sets every output channel's scale, so the
    other weights round to zero; downstream modules see the same function as before."""
    model = make_tiny_model()
    before = model.get_submodule(SENSITIVE.replace("hidden.1", "hidden.0"))
    with torch.no_grad():
        before.weight[0].zero_()
        before.bias[0] = 0.0
        weight = model.get_submodule(SENSITIVE).weight
        weight[:, 0] = 15 * weight.abs().max()
    return model


def _start_deviation(model, frames) -> dict:
    calib, val = frames
    quantized, _ = quantize_loaded(model, CONFIG, calib)
    return deviation_metrics(predict(quantized, val), predict(model, val), val)


def test_an_injected_very_sensitive_module_is_promoted_first(frames):
    model = _sensitive_model()
    calib, val = frames
    start = _start_deviation(model, frames)
    budget = parse_budget(f"forces={0.8 * start['force_mae_mev_a']}meV/A")
    result = search_bit_map(model, CONFIG, calib, val, budget)
    first = result.promotions[0]
    assert (first.target, first.from_bits, first.to_bits) == (SENSITIVE, 4, 8)
    assert first.error_share["forces"] == max(p.error_share.get("forces", 0) for p in result.promotions)
    assert result.met and result.config.weight_bits_of[SENSITIVE] >= 8
    assert bit_map(result.plan.entries).weights[SENSITIVE] >= 8


def test_an_already_met_budget_promotes_nothing(frames):
    model = make_tiny_model()
    calib, val = frames
    result = search_bit_map(model, CONFIG, calib, val, parse_budget("forces=1e6meV/A,energy=1e6meV/atom"),
                            sensitivity_frames=2)
    assert result.met and result.promotions == [] and result.sensitivity["frames"] == 2
    assert result.config == CONFIG
    plain, _ = quantize_loaded(model, CONFIG, calib)
    a, b = predict(result.model, val), predict(plain, val)
    assert np.array_equal(a.energies, b.energies)


def test_an_impossible_budget_says_what_was_reached(frames):
    calib, val = frames
    with pytest.raises(BudgetError) as caught:
        search_bit_map(make_tiny_model(), CONFIG, calib, val, parse_budget("forces=1e-9meV/A"))
    assert "not met even at W8A16" in caught.value.message and "forces" in caught.value.message
    assert "\n" not in caught.value.message
    best = search_bit_map(make_tiny_model(), CONFIG, calib, val, parse_budget("forces=1e-9meV/A"),
                          best_effort=True)
    assert not best.met
    assert set(bit_map(best.plan.entries).weights.values()) <= {8, 32}
    assert set(bit_map(best.plan.entries).activations.values()) == {16}


def test_the_same_seed_gives_the_same_map_and_the_same_bytes(frames, tmp_path):
    calib, val = frames
    budget = parse_budget("forces=1meV/A,energy=0.1meV/atom")
    files = []
    for k in range(2):
        result = search_bit_map(make_tiny_model(), CONFIG, calib, val, budget)
        path = tmp_path / f"{k}.safetensors"
        save_quantized(path, result.model, result.config, result.plan, "0" * 64, {})
        files.append((result.config, [(p.target, p.to_bits) for p in result.promotions], path.read_bytes()))
    assert files[0][1]  # something was promoted
    assert files[0] == files[1]


def _mixed_config() -> QuantConfig:
    return CONFIG.replace(weight_bits_overrides={"layers.0.pre_linear": 32, "readout_hidden": 2},
                          activation_bits_overrides={"layers.1.post_linear.input_quantizers.0": 16,
                                                     "layers.0.convolution.input_quantizers.1": 32})


def test_the_map_round_trips_through_the_file_and_inspect(frames, tmp_path, cli):
    calib, val = frames
    config = _mixed_config()
    model, plan = quantize_loaded(make_tiny_model(), config, calib)
    path = tmp_path / "mixed.safetensors"
    save_quantized(path, model, config, plan, "0" * 64, {})
    expected = bit_map(plan.entries)
    assert expected.weights["layers.0.pre_linear"] == 32 and expected.weights["readout_hidden"] == 2
    assert expected.activations["layers.0.convolution.input_quantizers.1"] == 32
    loaded = load_quantized(path)
    assert loaded.quant_config == config
    stored = bit_map(read_header(path).plan["entries"])
    assert (stored.weights, stored.activations) == (expected.weights, expected.activations)
    a, b = predict(model, val), predict(loaded, val)
    assert np.array_equal(a.energies, b.energies)
    assert all(np.array_equal(x, y) for x, y in zip(a.forces, b.forces))
    import json

    inspected = cli("inspect", path, "--json")
    assert inspected.exit_code == 0
    assert json.loads(inspected.stdout)["data"]["bit_map"] == json.loads(json.dumps(expected.to_dict()))
    human = cli("inspect", path, "--no-tensors")
    assert "bit map: weights" in human.stdout and "a16" in human.stdout and "fp32 x" in human.stdout


def test_overrides_are_validated_and_must_name_quantized_modules():
    with pytest.raises(InputError, match="must be one of"):
        CONFIG.replace(weight_bits_overrides={"readout_hidden": 3})
    with pytest.raises(InputError, match="must be one of"):
        CONFIG.replace(activation_bits_overrides={"readout_hidden.input_quantizers.0": 4})
    with pytest.raises(InputError, match="need quantized activations"):
        QuantConfig.from_preset("w4", activation_bits_overrides={"readout_hidden.input_quantizers.0": 16})
    from gaqtool.quant.apply import quantize_model

    with pytest.raises(InputError, match="does not quantize"):
        quantize_model(make_tiny_model(), CONFIG.replace(weight_bits_overrides={"no.such.module": 8}))
    assert QuantConfig.from_dict(_mixed_config().to_dict()) == _mixed_config()
    assert "weight_bits_overrides" not in CONFIG.to_dict()  # files without a map stay 0.2-readable


def test_qat_fine_tunes_under_the_chosen_map(frames):
    from gaqtool.qat import convert_qat, prepare_qat

    calib, _ = frames
    config = _mixed_config()
    model = convert_qat(prepare_qat(make_tiny_model(), config, calib))
    assert model.get_submodule("readout_hidden").weight_bits == 2
    assert model.get_submodule("layers.0.pre_linear").weight_names == []
    assert model.get_submodule("layers.1.post_linear").input_quantizers[0].num_bits == 16
    assert isinstance(model.get_submodule("layers.0.convolution").input_quantizers[1], torch.nn.Identity)
