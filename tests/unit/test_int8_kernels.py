"""Integer (int8 x int8 -> int32) kernels: numerics against a float reference, forces, fallbacks,
and the ``gaqtool bench`` command.

Reference for one layer (slow path, float64): the same dynamic symmetric per-row int8 grid applied
as fake quantization, times the dequantized weight. The integer GEMM is exact, so the two agree to
float32 rounding of the rescaling (relative 1e-6); tolerances below are stated per test.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)

from gaqtool.config import Method, QuantConfig  # noqa: E402
from gaqtool.data.frames import read_npz  # noqa: E402
from gaqtool.data.graph import make_batch  # noqa: E402
from gaqtool.data.spec import sample_path  # noqa: E402
from gaqtool.errors import InputError  # noqa: E402
from gaqtool.kernels import int8 as k8  # noqa: E402
from gaqtool.potential import energy_and_forces  # noqa: E402
from gaqtool.quant.modules import QuantizedModule  # noqa: E402
from gaqtool.workflow import quantize_loaded  # noqa: E402
from tests.conftest import make_tiny_model  # noqa: E402

# every layer, whatever int8 GEMMs measure on this machine (the numerics are the same everywhere)
ALL_LAYERS = dict(compile=False, min_in_features=1, min_out_features=1, min_macs=1,
                  require_speedup=False)


def fake_quant_rows(x: torch.Tensor) -> torch.Tensor:
    """Slow reference of the dynamic per-row grid: (M, K) -> (M, K) float64 on the int8 grid."""
    x = x.double()
    amax = x.abs().amax(1, keepdim=True).clamp_min(127e-12)
    return torch.round(x.float() * (127 / amax.float())).double() * (amax / 127)


def reference_linear(x, weight_int, weight_scale, bias):
    """float64 y = fq_rows(x) @ (W_int * s_w)^T + b."""
    w = weight_int.double() * weight_scale.double().unsqueeze(1)
    y = fake_quant_rows(x) @ w.t()
    return y + bias.double() if bias is not None else y


def random_weight(n: int, k: int, bits: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    qmax = 2 ** (bits - 1) - 1
    w_int = torch.randint(-qmax, qmax + 1, (n, k), generator=generator).to(torch.int8)
    return w_int, torch.rand(n, generator=generator) * 0.1 + 0.01


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("m,k,n", [(17, 9, 13), (33, 64, 416), (100, 7, 3), (64, 31, 65)])
@pytest.mark.parametrize("pad", [False, True])
def test_int8_linear_matches_fake_quant_reference(bits, m, k, n, pad):
    g = torch.Generator().manual_seed(m * k + n + bits)
    x = torch.randn(m, k, generator=g) * torch.rand(m, 1, generator=g) * 5  # rows of mixed scale
    x[0] = 0.0                                                             # an all-zero row
    w_int, w_scale = random_weight(n, k, bits, g)
    bias = torch.randn(n, generator=g)
    y = k8.int8_linear(x, w_int.t(), w_scale, bias, needs_padding=pad)
    ref = reference_linear(x, w_int, w_scale, bias)
    assert y.shape == (m, n) and y.dtype == torch.float32
    # exact int32 accumulation; only float32 rescaling differs: relative to the magnitude of |x||W|
    magnitude = (fake_quant_rows(x).abs() @ (w_int.double().abs() * w_scale.double().unsqueeze(1)).t())
    assert ((y.double() - ref).abs() <= 2e-6 * magnitude + 1e-6).all()
    assert torch.equal(y[0], bias)


def test_quantize_rows_grid():
    x = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.001]])
    q, s = k8.quantize_rows(x)
    assert q.dtype == torch.int8 and s.shape == (3, 1)
    assert q.tolist()[0] == [64, -127, 32] and q.tolist()[1] == [0, 0, 0] and q[2, 0] == 127
    assert (q.float() * s - x).abs().max() <= s.max() / 2 + 1e-7


def test_int8_quantization_fidelity_sqnr():
    """The dynamic int8 grid keeps the layer output within 35 dB of the float product."""
    from gaqtool.quant.primitives import sqnr_db

    g = torch.Generator().manual_seed(1)
    x = torch.randn(200, 64, generator=g)
    w_int, w_scale = random_weight(96, 64, 8, g)
    exact = x.double() @ (w_int.double() * w_scale.double().unsqueeze(1)).t()
    assert sqnr_db(exact, k8.int8_linear(x, w_int.t(), w_scale, None)) > 35.0


@pytest.mark.parametrize("integer_backward", [False, True])
def test_backward_uses_dequantized_weight_and_double_backward(integer_backward):
    """grad_x = grad_y @ W_deq (rounding straight-through), also under create_graph=True, where
    an offered integer backward must not be taken (the second derivative, taken without a graph,
    may use it: only the first derivatives are compared then)."""
    kernels = k8.IntegerKernels(k8.int8_linear, k8.int8_grad_input if integer_backward else None)
    g = torch.Generator().manual_seed(2)
    w_int, w_scale = random_weight(24, 40, 4, g)
    w_deq = w_int.float() * w_scale.unsqueeze(1)
    bias = torch.randn(24, generator=g, requires_grad=True)
    x0 = torch.randn(30, 40, generator=g)

    def energy(x, integer: bool):
        h = torch.tanh(x)
        if integer:
            y = k8.Int8LinearFunction.apply(h, w_deq, bias, kernels, w_int.t(), w_scale, w_int.contiguous())
        else:  # float reference with the same forward values and a straight-through backward
            y = F.linear(h + (fake_quant_rows(h).float() - h).detach(), w_deq, bias)
        return F.silu(y).pow(2).sum()

    results = []
    for integer in (True, False):
        x = x0.clone().requires_grad_(True)
        (gx, gb) = torch.autograd.grad(energy(x, integer), (x, bias), create_graph=True)
        (ggx,) = torch.autograd.grad(gx.pow(2).sum(), x)
        results.append((gx.detach(), gb.detach(), ggx))
    for a, b in list(zip(*results))[:2 if integer_backward else 3]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_integer_backward_is_the_float_product_within_int8_rounding():
    """Without create_graph the gradient to the input is an int8 GEMM of the row-quantized
    grad_y * scale: close to grad_y @ W_deq (SQNR > 35 dB), not equal to it."""
    from gaqtool.quant.primitives import sqnr_db

    g = torch.Generator().manual_seed(3)
    w_int, w_scale = random_weight(96, 64, 8, g)   # (N, K)
    w_deq = w_int.float() * w_scale.unsqueeze(1)
    x = torch.randn(300, 64, generator=g, requires_grad=True)
    grad_y = torch.randn(300, 96, generator=g)
    kernels = k8.IntegerKernels(k8.int8_linear, k8.int8_grad_input)
    y = k8.Int8LinearFunction.apply(x, w_deq, None, kernels, w_int.t(), w_scale, w_int.contiguous())
    (grad_x,) = torch.autograd.grad(y, x, grad_y)
    exact = grad_y.double() @ w_deq.double()
    assert sqnr_db(exact, grad_x) > 35.0
    assert not torch.equal(grad_x, (grad_y @ w_deq))
    y = k8.Int8LinearFunction.apply(x, w_deq, None, k8.IntegerKernels(k8.int8_linear), w_int.t(), w_scale)
    (float_grad,) = torch.autograd.grad(y, x, grad_y)
    torch.testing.assert_close(float_grad, grad_y @ w_deq)


# --- whole models ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def frames():
    return read_npz(sample_path("train"))


@pytest.fixture(scope="module")
def models(frames):
    fp32 = make_tiny_model()

    def config(bits, **changes):  # the error bounds below are stated for every weight rounded to
        # nearest at `bits` (no FP32 embedding, no 8-bit small-fan-in layers)
        return QuantConfig.from_preset(bits, energy_correction=False, weight_rounding="nearest",
                                       keep_fp32=(), small_fan_in_bits=0, **changes)

    return {"fp32": fp32,
            "w4a8": quantize_loaded(fp32, config("w4a8"), frames)[0],
            "w4": quantize_loaded(fp32, config("w4"), frames)[0],
            "w8a8": quantize_loaded(fp32, config("w8a8"), frames)[0],
            "naive-w8a8": quantize_loaded(fp32, config("w8a8", method=Method.NAIVE), frames)[0]}


def _per_row_reference(module, x):
    """Float STE reference of an integer nn.Linear: dynamic per-row fake quant, W_deq."""
    flat = x.reshape(-1, x.shape[-1])
    xq = flat + (fake_quant_rows(flat).float() - flat).detach()
    return F.linear(xq, module.inner.weight, module.inner.bias).reshape(*x.shape[:-1], -1)


def _integer_and_reference(model, integer_backward: bool = False):
    integer = copy.deepcopy(model)
    report = k8.enable_integer_kernels(integer, integer_backward=integer_backward, **ALL_LAYERS)
    reference = copy.deepcopy(model)
    for path in report.switched:
        reference.get_submodule(path).integer_forward = _per_row_reference
    return integer, reference, report


@pytest.mark.parametrize("integer_backward", [False, True], ids=["float-backward", "int8-backward"])
@pytest.mark.parametrize("preset", ["w4a8", "w4", "w8a8", "naive-w8a8"])  # naive: per-tensor scale
def test_potential_integer_path_matches_float_reference_and_fake_quant(models, frames, preset,
                                                                       integer_backward):
    integer, reference, report = _integer_and_reference(models[preset], integer_backward)
    linears = [p for p, m in integer.named_modules()
               if isinstance(m, QuantizedModule) and m.kind == "nn.Linear"]
    assert sorted(report.switched) == sorted(linears) and linears
    assert all("o3.Linear" not in p for p in report.switched)
    batch = make_batch(frames, range(3), integer.cutoff)
    e_int, f_int = energy_and_forces(integer, batch)
    e_ref, f_ref = energy_and_forces(reference, batch)
    e_fq, f_fq = energy_and_forces(models[preset], batch)
    e_fp, f_fp = energy_and_forces(models["fp32"], batch)
    calls = [m.integer_forward.calls["integer"] for m in integer.modules()
             if isinstance(m, QuantizedModule) and m.integer_forward is not None]
    assert min(calls) > 0
    # same numerics as the float per-row reference: eV and eV/A, float32 accumulation noise; the
    # int8 backward also rounds each row of the gradient (measured: up to 0.6 meV/A here)
    torch.testing.assert_close(e_int, e_ref, rtol=0, atol=2e-4)
    torch.testing.assert_close(f_int, f_ref, rtol=0, atol=2e-3 if integer_backward else 2e-4)
    # accuracy vs FP32 stays of the fake-quant model's order: the symmetric per-row grid spends one
    # bit on the sign of one-sided (SiLU) inputs, so at w8a8 its error can be up to ~2x the static
    # asymmetric per-channel grid's; at 4-bit weights the weight error dominates
    assert (e_int - e_fp).abs().max() <= 2.5 * (e_fq - e_fp).abs().max() + 1e-3
    assert (f_int - f_fp).abs().max() <= 2.5 * (f_fq - f_fp).abs().max() + 1e-3
    if preset.startswith("w4"):  # the change is small next to the quantization error itself
        assert (e_int - e_fq).abs().max() <= 0.1 * (e_fq - e_fp).abs().max()
        assert (f_int - f_fq).abs().max() <= 0.3 * (f_fq - f_fp).abs().max()


def test_weight_only_integer_forces_are_ste_gradients(models, frames):
    """Integer forces = autograd of the dequantized model (to the rounding of the dynamic
    activation grid); finite differences of the integer energy agree within the bound set by
    that energy's jitter, max|E_int - E_deq| / h (it is not smooth: rounding is not conservative)."""
    deq = models["w4"]
    integer = copy.deepcopy(deq)
    k8.enable_integer_kernels(integer, **ALL_LAYERS)
    batch = make_batch(frames, [0], integer.cutoff)
    e_int, f_int = energy_and_forces(integer, batch)
    e_deq, f_deq = energy_and_forces(deq, batch)
    assert (f_int - f_deq).abs().max() <= 0.15 * f_deq.abs().max()
    h, jitter, fd_deq_error, errors = 0.05, (e_int - e_deq).abs().item(), 0.0, []
    for atom, axis in [(0, 0), (5, 1), (11, 2), (17, 0)]:
        energies = {}
        for sign in (1, -1):
            positions = batch.positions.clone()
            positions[atom, axis] += sign * h
            with torch.no_grad():
                energies[sign] = [m(replace(batch, positions=positions)).item() for m in (integer, deq)]
            jitter = max(jitter, abs(energies[sign][0] - energies[sign][1]))
        fd_int, fd_deq = [-(energies[1][i] - energies[-1][i]) / (2 * h) for i in (0, 1)]
        errors.append(abs(fd_int - f_int[atom, axis].item()))
        fd_deq_error = max(fd_deq_error, abs(fd_deq - f_deq[atom, axis].item()))
    # FD_int = FD_deq + (jitter(+h) - jitter(-h)) / 2h, so |FD_int - F_int| is at most:
    bound = fd_deq_error + jitter / h + (f_int - f_deq).abs().max().item()
    assert fd_deq_error < 5e-3  # the dequantized model itself is smooth at this h
    assert max(errors) <= bound


def test_rotation_invariance_of_integer_path(models, frames):
    """Per-row scales of invariant inputs are invariant: E(Rx) = E(x), F(Rx) = R F(x)."""
    integer = copy.deepcopy(models["w4a8"])
    k8.enable_integer_kernels(integer, **ALL_LAYERS)
    batch = make_batch(frames, [0], integer.cutoff)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3)))[0]
    rotated = replace(batch, positions=batch.positions @ rotation.t())
    e, f = energy_and_forces(integer, batch)
    e_rot, f_rot = energy_and_forces(integer, rotated)
    e_fq, _ = energy_and_forces(models["w4a8"], batch)
    e_fq_rot, _ = energy_and_forces(models["w4a8"], rotated)
    # no worse than the fake-quant model (whose MDDQ direction rounding sets the floor), + 1 meV
    assert (e_rot - e).abs().item() <= (e_fq_rot - e_fq).abs().item() + 1e-3
    assert (f_rot - f @ rotation.t()).abs().max() <= 0.1 * f.abs().max()


def test_no_integer_kernel_falls_back_with_warning(models, frames, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("_int_mm: not supported on this CPU")

    monkeypatch.setattr(torch, "_int_mm", broken)
    model = copy.deepcopy(models["w4a8"])
    with pytest.warns(RuntimeWarning, match="no usable integer GEMM"):
        report = k8.enable_integer_kernels(model, **ALL_LAYERS)
    assert report.switched == {} and report.warnings and report.backend.startswith("none")
    batch = make_batch(frames, [0], model.cutoff)
    torch.testing.assert_close(model(batch), models["w4a8"](batch), rtol=0, atol=0)


def test_slow_integer_gemm_keeps_fake_quant_with_a_warning(models, frames, monkeypatch):
    """Where int8 GEMMs measure slower than float32 (CPUs without VNNI), nothing is switched."""
    monkeypatch.setattr(k8, "int_mm_speedup", lambda device: 0.07)
    model = copy.deepcopy(models["w4a8"])
    with pytest.warns(RuntimeWarning, match=r"0.07x float32 speed"):
        report = k8.enable_integer_kernels(model, compile=False, min_in_features=1,
                                           min_out_features=1, min_macs=1)
    assert report.switched == {} and report.backend.startswith("none") and report.kept
    batch = make_batch(frames, [0], model.cutoff)
    torch.testing.assert_close(model(batch), models["w4a8"](batch), rtol=0, atol=0)
    forced = k8.enable_integer_kernels(copy.deepcopy(models["w4a8"]), **ALL_LAYERS)
    assert forced.switched          # require_speedup=False switches whatever the speed


def test_int8_speed_probe_measures_a_positive_ratio():
    k8._measured_speedup.cache_clear()
    speedup = k8.int_mm_speedup("cpu")
    assert 0 < speedup < 100 and k8.int_mm_speedup(torch.device("cpu")) == speedup  # measured once


def test_row_rule_follows_the_nearest_probe_size():
    rule = k8.RowRule(forward=(True, True, False, False), backward=(False, True, True, True))
    assert k8.PROBE_ROWS == (256, 1024, 4096, 16384)
    assert rule.at(1) == (True, False) and rule.at(400) == (True, False)     # nearest: 256
    assert rule.at(600) == (True, True) and rule.at(2000) == (True, True)    # nearest: 1024
    assert rule.at(6048) == (False, True) and rule.at(10**6) == (False, True)
    assert "rows 256, 1024 (forward), 1024, 4096, 16384 (backward)" in rule.describe()


def test_measured_row_rule_has_one_verdict_per_size_and_direction():
    kernels = k8.make_kernels(compile=False, integer_backward=True)
    rule = k8.measure_row_rule(kernels, 16, 24)
    assert len(rule.forward) == len(rule.backward) == len(k8.PROBE_ROWS)
    assert all(isinstance(f, bool) for f in rule.forward + rule.backward)
    assert k8.measure_row_rule(k8.make_kernels(False, False), 16, 24).backward == (False,) * 4


@pytest.mark.parametrize("forward,backward", [(False, True), (True, False), (False, False)])
def test_measured_rules_choose_the_direction_of_each_call(models, frames, monkeypatch, forward,
                                                          backward):
    """A layer whose forward measured slower in int8 runs the fake-quant forward and, where the
    backward won, the int8 backward; neither winning is exactly the fake-quant model."""
    monkeypatch.setattr(k8, "int_mm_speedup", lambda device: 10.0)
    monkeypatch.setattr(k8, "measure_row_rule",
                        lambda *a: k8.RowRule((forward,) * 4, (backward,) * 4))
    model = copy.deepcopy(models["w4"])
    report = k8.enable_integer_kernels(model, compile=False, min_in_features=1,
                                       min_out_features=1, min_macs=1)
    if not (forward or backward):   # nothing won: nothing switched, and the report says why
        assert not report.switched and any("measured slower" in v for v in report.kept.values())
    else:
        assert report.switched and all("int8 faster at rows" in v for v in report.switched.values())
    batch = make_batch(frames, range(2), model.cutoff)
    e_int, f_int = energy_and_forces(model, batch)
    e_fq, f_fq = energy_and_forces(models["w4"], batch)
    wrappers = [m.integer_forward for m in model.modules()
                if isinstance(m, QuantizedModule) and m.integer_forward is not None]
    key = "integer" if forward else "integer backward only"
    assert all(w.calls[key] > 0 for w in wrappers)
    if not forward:   # float forward on the dequantized weights: the weight-only energy
        torch.testing.assert_close(e_int, e_fq, rtol=0, atol=1e-5)
    if not (forward or backward):
        torch.testing.assert_close(f_int, f_fq, rtol=0, atol=0)
    elif backward:    # the int8 backward rounds each gradient row: close, not equal
        assert 0 < (f_int - f_fq).abs().max() < 5e-3


def test_failed_compile_falls_back_to_eager_with_warning(models, frames, monkeypatch):
    def failing_compile(fn, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("inductor: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", failing_compile)
    model = copy.deepcopy(models["w4a8"])
    k8.enable_integer_kernels(model, compile=True, min_in_features=1, min_out_features=1, min_macs=1,
                             require_speedup=False)
    batch = make_batch(frames, [0], model.cutoff)
    with pytest.warns(RuntimeWarning, match="torch.compile of the int8 kernel failed"):
        energy = model(batch)
    eager = copy.deepcopy(models["w4a8"])
    k8.enable_integer_kernels(eager, **ALL_LAYERS)
    torch.testing.assert_close(energy, eager(batch), rtol=0, atol=1e-6)


def test_small_inputs_and_thresholds_keep_fake_quant(models, frames):
    model = copy.deepcopy(models["w4a8"])
    report = k8.enable_integer_kernels(model, compile=False, min_macs=10**12, require_speedup=False)
    assert "radial.hidden.0" in " ".join(report.kept) and "K=8" in " ".join(report.kept.values())
    batch = make_batch(frames, [0], model.cutoff)
    torch.testing.assert_close(model(batch), models["w4a8"](batch), rtol=0, atol=0)
    assert k8.disable_integer_kernels(model) == len(report.switched)


# --- gaqtool bench ------------------------------------------------------------------------

def test_bench_command_runs_on_tiny_inputs(tiny_checkpoint):
    from typer.testing import CliRunner

    import gaqtool.cli.app as app_module

    app_module._register()
    args = ["bench", str(tiny_checkpoint), "--repeats", "1", "--warmup", "0", "--batch-size", "2",
            "--cluster-molecules", "2", "--threads", "1", "--json"]
    args += ["--config", "fake-quant", "--config", "int8-eager", "--config", "bf16"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(app_module.app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    systems = {s["name"] for s in data["systems"]}
    assert systems == {"1 aspirin", "2 aspirins", "2-aspirin grid"}
    rows = {(r["config"], r["system"]): r for r in data["results"]}
    assert ("int8-eager", "1 aspirin") in rows and ("fp32", "2 aspirins") in rows
    assert all(r["status"] == "ok" and r["median_s"] > 0 for r in data["results"])
    assert data["threads"] == 1 and data["cpu"]
    for system in systems:  # the FP32 reference is itself; the quantized models deviate from it
        fp32, fake = rows[("fp32", system)], rows[("fake-quant", system)]
        assert fp32["max_abs_energy_error_meV"] == 0 and fp32["max_abs_force_error_meV_per_A"] == 0
        assert 0 < fake["max_abs_force_error_meV_per_A"] < 1e4
        assert data["ratios"]["fake-quant"][system]["speedup"] == pytest.approx(fp32["median_s"] / fake["median_s"])
        assert data["ratios"]["fake-quant"][system]["memory"] == pytest.approx(fake["peak_bytes"] / fp32["peak_bytes"])
    # integer kernels compute the same quantized model as fake quantization
    assert rows[("int8-eager", "1 aspirin")]["max_abs_force_error_meV_per_A"] == pytest.approx(
        rows[("fake-quant", "1 aspirin")]["max_abs_force_error_meV_per_A"], rel=0.05, abs=0.5)
    # the tiny model's layers (N <= 64) are all below the thresholds where int8 pays: each says why
    report = data["integer_kernels"]["int8-eager"]
    assert report["kept"] and all(report["kept"].values())
    assert all("N>=128" in why for path, why in report["kept"].items() if "K=" in why)
    assert data["int8_gemm_speedup"] > 0                 # measured, whatever this CPU does

    bad = CliRunner().invoke(app_module.app, ["bench", str(tiny_checkpoint), "--repeats", "0"])
    assert bad.exit_code != 0
    not_sevenn = CliRunner().invoke(app_module.app, ["bench", str(tiny_checkpoint), "--config", "sevenn"])
    assert isinstance(not_sevenn.exception, InputError) and "needs a SevenNet model" in str(not_sevenn.exception)


@pytest.mark.slow
def test_compiled_kernel_matches_eager():
    """The inductor-fused kernel (the default) computes the same numbers as the eager one."""
    kernel = k8.make_kernel(compile=True)
    g = torch.Generator().manual_seed(4)
    for m in (130, 257):  # two row counts: dynamic shapes, no recompilation needed for the result
        x = torch.randn(m, 64, generator=g)
        w_int, w_scale = random_weight(96, 64, 4, g)
        bias = torch.randn(96, generator=g)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # no silent fallback to eager
            y = kernel(x, w_int.t(), w_scale, bias)
        torch.testing.assert_close(y, k8.int8_linear(x, w_int.t(), w_scale, bias), rtol=1e-5, atol=1e-5)


def test_e3nn_fully_connected_layers_run_the_integer_kernel_with_ste_gradients():
    """A radial network [8, 64, 64, 96] quantized to W4: the int8 path equals the float64
    reference (dynamic per-row grid of each layer's input, e3nn's normalisation folded into the
    scales), and its input gradient is the straight-through one through the dequantized weights
    (float backward exactly; the int8 backward to within its rounding of the gradient rows)."""
    from e3nn import nn as enn

    from gaqtool.quant.apply import quantize_model

    torch.manual_seed(0)
    net = torch.nn.Sequential()
    net.add_module("radial", enn.FullyConnectedNet([8, 64, 64, 96], torch.nn.functional.silu))
    quantized, _ = quantize_model(copy.deepcopy(net), QuantConfig.from_preset("w4", keep_fp32=()))
    report = k8.enable_integer_kernels(quantized, integer_backward=False, **ALL_LAYERS)
    assert len(report.switched) == 3 and all("K=" in v for v in report.switched.values())
    x0 = torch.randn(200, 8)

    def reference(x):
        for layer in quantized.radial:                      # float64, same grids, same weights
            inner = layer.inner
            h = fake_quant_rows(x) @ inner.weight.double()
            if inner.act is not None:
                h = inner.act(h / (inner.h_in * inner.var_in) ** 0.5) * inner.var_out ** 0.5
            else:
                h = h / (inner.h_in * inner.var_in / inner.var_out) ** 0.5
            x = h
        return x

    x = x0.clone().requires_grad_(True)
    y = quantized(x)
    torch.testing.assert_close(y.double(), reference(x0.double()), rtol=1e-4, atol=1e-5)
    assert all(layer.integer_forward.calls["integer"] == 1 for layer in quantized.radial)
    (grad,) = torch.autograd.grad(y.pow(2).sum(), x)
    k8.disable_integer_kernels(quantized)

    def straight_through(x):                                # fake-quant forward values, STE backward
        for layer in quantized.radial:
            x = layer.inner(x + (fake_quant_rows(x).float() - x).detach())
        return x

    x = x0.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(straight_through(x).pow(2).sum(), x)
    torch.testing.assert_close(grad, expected, rtol=1e-3, atol=1e-4)

    from gaqtool.quant.primitives import sqnr_db

    k8.enable_integer_kernels(quantized, integer_backward=True, **ALL_LAYERS)
    x = x0.clone().requires_grad_(True)
    (integer_grad,) = torch.autograd.grad(quantized(x).pow(2).sum(), x)
    assert sqnr_db(expected.double(), integer_grad) > 30.0 and not torch.equal(integer_grad, grad)
