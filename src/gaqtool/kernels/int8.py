"""Integer GEMMs (int8 x int8 -> int32, ``torch._int_mm``) for quantized dense layers: ``nn.Linear``
and the layers of e3nn's ``FullyConnectedNet`` (the radial networks of SevenNet and NequIP-style models).

Numerics of one switched layer, for an input ``x (M, K)`` float32 and the layer's stored weights
``W_int (N, K)`` int8 (values of 2, 4 or 8 bits, already unpacked) with per-output-channel scales
``s_w (N,)``:

  1. dynamic symmetric per-row activation quantization: ``s_x = max_k |x[m, k]| / 127`` (M, 1),
     ``x_int = round(x / s_x)`` int8 in [-127, 127];
  2. ``acc = x_int @ W_int^T`` int32 (``torch._int_mm``);
  3. ``y = acc * s_x * s_w + bias`` float32.

This *replaces* the layer's static activation fake quantizer (per-channel asymmetric, calibrated)
by the dynamic per-row grid; on invariant inputs (radial basis, attention scalars: every
``nn.Linear`` of the reference potential) the row scales are rotation invariant, so
equivariance is untouched. Backward (forces): ``grad_x = grad_y @ W_deq`` with the dequantized
float weight, i.e. the rounding of step 1 is straight-through, as in the fake-quant model. The
backward is built from differentiable ops, so double backward (training on forces) works too; the
layer's own second derivative is zero, as for any linear map.

On this CPU build ``torch._int_mm`` accepts any shape; CUDA needs M > 16 and K, N multiples of 8
(see :func:`probe_int_mm`), handled by zero padding (:func:`pad_operands`).
"""

from __future__ import annotations

import bisect
import functools
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.modules import QuantizedModule
from gaqtool.quant.float_graph import forget_float_graph

__all__ = ["QMAX", "IntMMSupport", "probe_int_mm", "quantize_rows", "pad_operands",
           "int8_linear", "Int8LinearFunction", "IntegerLinear", "IntegerKernelReport",
           "make_kernel", "make_kernels", "IntegerKernels", "int8_grad_input", "enable_integer_kernels", "disable_integer_kernels",
           "MIN_IN_FEATURES", "MIN_OUT_FEATURES", "MIN_MACS",
           "int_mm_speedup", "MIN_INT8_SPEEDUP", "SPEED_PROBE_SHAPE",
           "PROBE_ROWS", "RowRule", "measure_row_rule"]

QMAX = 127
_EPS = 1e-12  # smallest row scale: an all-zero row quantizes to zeros


class IntMMSupport:
    """Whether ``torch._int_mm`` runs on a device, and whether operands must be padded.

    available: the kernel ran and gave exact int32 results
    needs_padding: only aligned shapes (M > 16, K and N multiples of 8) run
    reason: why it is unavailable ('' if available)
    """

    def __init__(self, available: bool, needs_padding: bool, reason: str = ""):
        self.available, self.needs_padding, self.reason = available, needs_padding, reason

    def __repr__(self) -> str:
        return (f"IntMMSupport(available={self.available}, needs_padding={self.needs_padding}, "
                f"reason={self.reason!r})")


def _try_int_mm(m: int, k: int, n: int, device: torch.device) -> str:
    """'' if ``torch._int_mm`` gives the exact product for an (m, k) x (k, n) pair, else why not."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-QMAX, QMAX + 1, (m, k), dtype=torch.int8, generator=generator).to(device)
    b = torch.randint(-QMAX, QMAX + 1, (k, n), dtype=torch.int8, generator=generator).to(device)
    try:
        out = torch._int_mm(a, b)
    except (RuntimeError, NotImplementedError, AttributeError) as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    if out.dtype != torch.int32 or not torch.equal(out.cpu().long(), a.cpu().long() @ b.cpu().long()):
        return "torch._int_mm returned a wrong result"
    return ""


# The shape of a radial-MLP output layer over a few hundred edges: (rows, K) x (K, N)
SPEED_PROBE_SHAPE = (512, 64, 960)
# Below this measured int8 / float32 GEMM throughput the quantization passes cannot be repaid
# (measured on an AVX512-VNNI CPU: 3.5-5x; without VNNI this torch build's torch._int_mm ran
# at 0.02-0.06x float32 on an AVX2 CPU, 2026-12-02)
MIN_INT8_SPEEDUP = 1.2


# Untimed calls before a measurement: oneDNN's first int8 GEMMs of a process run 10-200x slower
# (kernel generation, then about 0.9 ms instead of 0.1 ms for the next few calls at 512 x 64 x
# 960 on an AMX Xeon, 2026-12-02), which made single-warm-up probes read 0.5x-4.3x
WARMUP_CALLS = 10


def _best_seconds(run: Callable[[], torch.Tensor], device: torch.device, repeats: int = 5,
                  warmup: int = WARMUP_CALLS) -> float:
    def timed() -> float:
        started = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started

    for _ in range(warmup):
        timed()
    return min(timed() for _ in range(repeats))


def int_mm_speedup(device: torch.device | str = "cpu") -> float:
    """Measured ``torch._int_mm`` throughput over float32 ``torch.mm`` at
    :data:`SPEED_PROBE_SHAPE` on ``device`` (best of 5 each after :data:`WARMUP_CALLS`, once per
    process and device). Whether int8 pays depends on the CPU (VNNI,
    AMX) and the torch build, so it is measured."""
    return _measured_speedup(str(torch.device(device)))


@functools.lru_cache(maxsize=None)
def _measured_speedup(device_name: str) -> float:
    device = torch.device(device_name)
    m, k, n = SPEED_PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(-QMAX, QMAX + 1, (m, k), dtype=torch.int8, generator=generator).to(device)
    b = torch.randint(-QMAX, QMAX + 1, (k, n), dtype=torch.int8, generator=generator).to(device)
    af, bf = a.float(), b.float()
    integer = _best_seconds(lambda: torch._int_mm(a, b), device)
    floating = _best_seconds(lambda: torch.mm(af, bf), device)
    return floating / integer


# Row counts at which each switched layer shape times its integer kernels against float32
# (radial networks: one row per edge; 1 aspirin ~300 edges, 216-atom Si ~6000, 32 aspirins ~10^4)
PROBE_ROWS = (256, 1024, 4096, 16384)
# geometric means of neighbouring probes: a call takes the probe nearest on a log scale
_PROBE_BOUNDARIES = [math.sqrt(a * b) for a, b in zip(PROBE_ROWS, PROBE_ROWS[1:])]


@dataclass(frozen=True)
class RowRule:
    """Where one layer shape's integer kernels ran faster than float32, measured per direction.

    forward, backward: one flag per :data:`PROBE_ROWS` entry, True where int8 won there. A call
    of M rows follows the probe nearest to M on a log scale. Why measured: on an AMX/VNNI Xeon
    (2026-12-02, 2 threads) ``torch._int_mm`` for 6048 x 64 -> 960 took 8.6 ms against 6.9 ms
    float32, while 512 rows took 0.14 against 0.41 ms and the backward shape 6048 x 960 -> 64
    0.86 against 6.5 ms: where the int32 product outgrows the cache, the forward loses.
    """

    forward: tuple[bool, ...]
    backward: tuple[bool, ...]

    def at(self, rows: int) -> tuple[bool, bool]:
        """(integer forward, integer backward) for a call of ``rows`` rows."""
        i = bisect.bisect(_PROBE_BOUNDARIES, rows)
        return self.forward[i], self.backward[i]

    def describe(self) -> str:
        def rows(flags):
            won = [str(r) for r, f in zip(PROBE_ROWS, flags) if f]
            return ", ".join(won) if won else "none"
        return (f"int8 faster at rows {rows(self.forward)} (forward), {rows(self.backward)} "
                f"(backward) of {', '.join(map(str, PROBE_ROWS))}")


def measure_row_rule(kernels: "IntegerKernels", in_features: int, out_features: int,
                     device: torch.device | str = "cpu") -> RowRule:
    """Time ``kernels`` (forward with per-row quantization and dequantization included; the
    integer backward if there is one) against the float32 products of a (K, N) layer at every
    :data:`PROBE_ROWS` row count, best of 3 (after :data:`WARMUP_CALLS` at the first size, one
    at the others)."""
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    k, n = in_features, out_features
    weight_int = torch.randint(-QMAX, QMAX + 1, (n, k), dtype=torch.int8, generator=generator).to(device)
    scale = (torch.rand(n, generator=generator) * 0.01).to(device)
    weight, weight_t, weight_nk = weight_int.float() * scale[:, None], weight_int.t(), weight_int.contiguous()
    forward, backward = [], []
    for i, rows in enumerate(PROBE_ROWS):
        x = torch.randn(rows, k, generator=generator).to(device)
        grad_y = torch.randn(rows, n, generator=generator).to(device)
        warmup = WARMUP_CALLS if i == 0 else 1       # the smallest size warms the kernels up
        best = functools.partial(_best_seconds, device=device, repeats=3, warmup=warmup)
        forward.append(best(lambda: kernels.forward(x, weight_t, scale, None)) < best(lambda: x @ weight.t()))
        if kernels.backward is None:
            backward.append(False)
            continue
        backward.append(best(lambda: kernels.backward(grad_y, weight_nk, scale)) < best(lambda: grad_y @ weight))
    return RowRule(tuple(forward), tuple(backward))


def probe_int_mm(device: torch.device | str = "cpu") -> IntMMSupport:
    """Run ``torch._int_mm`` on an odd and an aligned shape on ``device``."""
    device = torch.device(device)
    if _try_int_mm(17, 9, 11, device) == "":
        return IntMMSupport(True, False)
    aligned = _try_int_mm(32, 16, 16, device)
    if aligned == "":
        return IntMMSupport(True, True)
    return IntMMSupport(False, False, aligned)


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric per-row int8 quantization.

    x: (M, K) float. Returns ``x_int`` (M, K) int8 in [-127, 127] and ``scale`` (M, 1) float32
    (units of x) with ``x ≈ x_int * scale``; ``scale = max_k |x[m, k]| / 127`` (>= 1e-12).

    >>> q, s = quantize_rows(torch.tensor([[0.5, -1.0], [0.0, 0.0]]))
    >>> q.tolist(), s.squeeze(1).tolist()[1]
    ([[64, -127], [0, 0]], 1e-12)
    """
    x = x.float()
    # abs().amax() is ~20x faster than linalg.vector_norm(x, inf) on this CPU
    amax = x.abs().amax(dim=1, keepdim=True).clamp_min(_EPS * QMAX)
    x_int = torch.round(x * (QMAX / amax)).to(torch.int8)  # |x * 127 / amax| <= 127: no clamp needed
    return x_int, amax / QMAX


def pad_operands(x_int: torch.Tensor, weight_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad (M, K) int8 and (K, N) int8 to M >= 17 and K, N multiples of 8 (CUDA constraints).

    Zero rows/columns add nothing to the int32 products; the caller slices the result to (M, N).
    """
    m, k = x_int.shape
    n = weight_t.shape[1]
    pad_k, pad_n, pad_m = -k % 8, -n % 8, max(0, 17 - m)
    if pad_k or pad_m:
        x_int = F.pad(x_int, (0, pad_k, 0, pad_m))
    if pad_k or pad_n:
        weight_t = F.pad(weight_t, (0, pad_n, 0, pad_k))
    return x_int, weight_t


def int8_linear(x: torch.Tensor, weight_t: torch.Tensor, weight_scale: torch.Tensor,
                bias: torch.Tensor | None, needs_padding: bool = False) -> torch.Tensor:
    """``y = dequant(quantize_rows(x) @ weight_t) + bias``, the integer forward of one layer.

    x: (M, K) float32; weight_t: (K, N) int8 (a transposed view of nn.Linear's (N, K) is fine);
    weight_scale: (N,) float32 per output channel; bias: (N,) float32 or None.
    Returns (M, N) float32.
    """
    x_int, row_scale = quantize_rows(x)
    if needs_padding:
        m, n = x.shape[0], weight_t.shape[1]
        acc = torch._int_mm(*pad_operands(x_int, weight_t))[:m, :n]
    else:
        acc = torch._int_mm(x_int, weight_t)                  # (M, N) int32
    y = acc.to(torch.float32).mul_(row_scale).mul_(weight_scale)  # one new tensor, two in-place passes
    return y.add_(bias) if bias is not None else y


def int8_grad_input(grad_y: torch.Tensor, weight_int: torch.Tensor, weight_scale: torch.Tensor
                    ) -> torch.Tensor:
    """``grad_x = grad_y @ W_deq`` as an integer GEMM, the backward of :func:`int8_linear`.

    grad_y: (M, N) float32; weight_int: (N, K) int8 (row n: output channel n); weight_scale: (N,).
    ``W_deq[n, k] = weight_int[n, k] * weight_scale[n]``, so the scale goes onto ``grad_y``'s
    columns, whose rows are then quantized like activations (per row, int8): one more rounding,
    of the gradient only. Returns (M, K) float32.
    """
    g_int, row_scale = quantize_rows(grad_y * weight_scale)
    return torch._int_mm(g_int, weight_int).to(torch.float32).mul_(row_scale)


@dataclass(frozen=True)
class IntegerKernels:
    """The integer kernels of a switched layer.

    forward:  :func:`int8_linear` or its compiled version, or None: the float product with the
              dequantized weight
    backward: :func:`int8_grad_input` or its compiled version, or None: the float backward
    """

    forward: Callable | None
    backward: Callable | None = None


class Int8LinearFunction(torch.autograd.Function):
    """Integer forward; backward ``grad_x = grad_y @ W_deq`` (straight-through rounding).

    forward(x (M, K) float32, weight_deq (N, K) float32, bias (N,) or None, kernels
    (:class:`IntegerKernels`; a None forward is the float product ``x @ weight_deq^T``),
    weight_t (K, N) int8, weight_scale (N,) float32, weight_nk (N, K)
    int8 contiguous or None) -> (M, N) float32. Only ``x`` and ``bias`` receive gradients
    (weights are constants of a quantized model). The backward is the integer GEMM
    ``kernels.backward`` where there is one, ``weight_nk`` is given and no graph of the backward
    is wanted; otherwise (and always with ``create_graph``: double backward, training on forces)
    it is the float product, made of differentiable ops.
    """

    @staticmethod
    def forward(ctx, x, weight_deq, bias, kernels, weight_t, weight_scale, weight_nk=None):
        ctx.save_for_backward(weight_deq, weight_scale, weight_nk)
        ctx.has_bias, ctx.kernels = bias is not None, kernels
        if kernels.forward is None:                       # float forward, integer backward
            return F.linear(x, weight_deq, bias)
        return kernels.forward(x, weight_t, weight_scale, bias)

    @staticmethod
    def backward(ctx, grad_out):
        weight_deq, weight_scale, weight_nk = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            integer = (ctx.kernels.backward is not None and weight_nk is not None
                       and not torch.is_grad_enabled() and grad_out.dtype == torch.float32)
            grad_x = (ctx.kernels.backward(grad_out.contiguous(), weight_nk, weight_scale) if integer
                      else grad_out @ weight_deq.to(grad_out.dtype))
        grad_bias = grad_out.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, None, None, None, None


DENSE_KINDS = ("nn.Linear", "e3nn.FullyConnectedNet.layer")


@dataclass
class DenseLayer:
    """One quantized dense layer as ``y = post(x @ W^T + bias)``, seen through its wrapper.

    in_features, out_features: K, N
    weight_int:  (K, N) int8 view of the wrapper's stored integers
    weight_scale: (N,) float32 per output channel, any constant factor of the layer folded in
    weight:      (N, K) float32, the dequantized effective weight (the backward's)
    bias:        (N,) or None
    post:        applied after the product (an e3nn layer's normalised activation), or None
    """

    in_features: int
    out_features: int
    weight_int: torch.Tensor
    weight_scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    post: Callable | None


def dense_layer(module: QuantizedModule) -> DenseLayer:
    """The :class:`DenseLayer` of an ``nn.Linear`` or e3nn ``FullyConnectedNet`` layer wrapper.

    e3nn's layer stores ``weight (h_in, h_out)`` and computes ``x @ (weight * c)`` with
    ``c = (h_in var_in)^-1/2`` then ``act(.) * var_out^1/2`` (``c = (h_in var_in / var_out)^-1/2``
    without an activation), so ``c`` is folded into the per-column scales.
    """
    inner = module.inner
    scale = module.weight_scale.detach().reshape(-1).float()   # (N,), or (1,) if per-tensor
    if module.kind == "nn.Linear":
        n, k = inner.weight.shape
        weight_int, weight, bias, post = module.weight_int.t(), inner.weight, inner.bias, None
    else:
        k, n = inner.weight.shape
        if inner.act is not None:
            factor = (inner.h_in * inner.var_in) ** -0.5
            act, gain = inner.act, inner.var_out ** 0.5

            def post(y: torch.Tensor) -> torch.Tensor:
                return act(y) * gain
        else:
            factor, post = (inner.h_in * inner.var_in / inner.var_out) ** -0.5, None
        weight_int, weight, bias = module.weight_int, (inner.weight * factor).t(), None
        scale = scale * factor
    scale = scale if scale.numel() == n else scale.expand(n).contiguous()
    return DenseLayer(k, n, weight_int, scale, weight, bias, post)


class IntegerLinear:
    """The callable installed as ``QuantizedModule.integer_forward`` on a dense-layer wrapper
    (``nn.Linear`` or an e3nn ``FullyConnectedNet`` layer, see :func:`dense_layer`).

    Holds only derived data (not an nn.Module, so nothing enters the state dict or the file):
      weight_t:     (K, N) int8, the wrapper's integers (view or contiguous copy)
      weight_scale: (N,) float32 per output channel (a per-tensor scale is expanded)
      weight_deq:   (N, K) float32 effective weight for the backward (a view of the layer's own
                    for nn.Linear; for e3nn layers a scaled copy)
      min_macs:     calls with fewer multiply-accumulates (rows x K x N) run the fake-quant float
                    path: the compiled kernel's fixed cost (~25 us) exceeds the GEMM saving there
      rule:         :class:`RowRule` choosing per call and direction where int8 runs, or None:
                    int8 in both directions at every size (above ``min_macs``)
    ``__call__(module, x (..., K))`` -> (..., N) float32. A call whose forward is float32 by the
    rule quantizes its input as the fake-quant path does (the layer's static grid, if any).
    """

    def __init__(self, module: torch.nn.Module, kernels: IntegerKernels, min_macs: int,
                 needs_padding: bool = False, contiguous_weight: bool = False,
                 rule: RowRule | None = None):
        layer = dense_layer(module)
        self.weight_t = layer.weight_int.contiguous() if contiguous_weight else layer.weight_int
        # (N, K) int8 for the integer backward (CUDA's padding rules are not handled there)
        self.weight_nk = (layer.weight_int.t().contiguous()
                          if kernels.backward is not None and not needs_padding else None)
        self.weight_scale = layer.weight_scale
        self.weight_deq, self.bias, self.post = layer.weight, layer.bias, layer.post
        self.macs_per_row = layer.in_features * layer.out_features
        forward = functools.partial(kernels.forward, needs_padding=True) if needs_padding else kernels.forward
        # by (integer forward, integer backward); a None backward is the float product
        self.kernels = {(True, True): IntegerKernels(forward, kernels.backward),
                        (True, False): IntegerKernels(forward, None),
                        (False, True): IntegerKernels(None, kernels.backward)}
        self.min_macs = int(min_macs)
        self.rule = rule
        self.calls = {"integer": 0, "integer backward only": 0, "float": 0}

    def __call__(self, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(1, x.shape[-1])
        integer_forward, integer_backward = self.rule.at(rows) if self.rule else (True, True)
        integer_backward = integer_backward and self.weight_nk is not None
        if (rows * self.macs_per_row < self.min_macs or x.dtype != torch.float32
                or not (integer_forward or integer_backward)):
            self.calls["float"] += 1
            return module.inner(module.input_quantizers[0](x))   # exactly the fake-quant path
        kernels = self.kernels[integer_forward, integer_backward]
        if not integer_forward:
            self.calls["integer backward only"] += 1
            x = module.input_quantizers[0](x)
        else:
            self.calls["integer"] += 1
        flat = x.reshape(rows, x.shape[-1])
        y = Int8LinearFunction.apply(flat, self.weight_deq, self.bias, kernels, self.weight_t,
                                     self.weight_scale, self.weight_nk)
        if self.post is not None:
            y = self.post(y)
        return y.reshape(*x.shape[:-1], y.shape[-1])


# --- switching a model ---------------------------------------------------------------------

# Measured on the 2-core AVX512-VNNI CPU, forward + int8 backward against the two float32 GEMMs
# (benchmarks/int8_layer_kernels.py --sweep, 2026-12-02): K = 64, N = 960 wins from ~100 rows
# (1.13x; 1.8-1.95x from 290), N = 384 from ~290 rows (1.14x; 1.4-2.0x from 600), while K = N = 64
# loses up to ~5000 rows (0.26x at 290, 0.72x at 2400, 1.12x at 6048): the fixed cost of the
# compiled quant/dequant (~150 us per call pair) outweighs so small a GEMM. For K = 8 (radial
# basis) or K = 32, N <= 64 (attention, readout over atoms) the quantization costs more than the
# GEMM saves too.
MIN_IN_FEATURES = 64
MIN_OUT_FEATURES = 128
MIN_MACS = 5_000_000  # rows x K x N per call; e.g. 200 x 64 x 384 or 80 x 64 x 960

_NOT_SWITCHED = {
    "o3.Linear": "inputs are MDDQ-quantized irreps: l>0 blocks are not on an integer grid and a "
                 "per-row int8 requantization of them would break equivariance; the l=0 path is a "
                 "channels x channels GEMM over atoms, too small to pay",
    "ChannelwiseConvolution": "no weights (per-edge weights come from the radial MLP); its float "
                              "bmm over l>0 components stays float",
    "nn.Embedding": "a table lookup, no GEMM",
}


@dataclass
class IntegerKernelReport:
    """What :func:`enable_integer_kernels` did.

    backend:  e.g. 'torch._int_mm + compiled quant/dequant', or 'none (fake quantization)'
    switched: module path -> what runs there now (shapes, weight bits, activation grid)
    kept:     module path -> why it still runs the fake-quant float path
    warnings: messages also issued with ``warnings.warn``
    settings: the thresholds used (min_in_features, min_out_features, min_macs)
    """

    backend: str
    switched: dict[str, str] = field(default_factory=dict)
    kept: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    settings: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"backend": self.backend, "switched": self.switched, "kept": self.kept,
                "warnings": self.warnings, "settings": self.settings}


class _FirstCallFallback:
    """Runs ``compiled``; if its first call fails (no C++ toolchain, unsupported op), warns once
    and runs ``eager`` from then on. Later failures are bugs and propagate."""

    def __init__(self, compiled: Callable, eager: Callable):
        self.compiled, self.eager, self.verified = compiled, eager, False

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.eager(*args, **kwargs)
        if self.verified:
            return self.compiled(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (inductor raises many types; the fallback is reported)
            warnings.warn(f"torch.compile of the int8 kernel failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); using the eager "
                          "kernel, whose activation quantization costs more than the int8 GEMM saves",
                          RuntimeWarning, stacklevel=2)
            self.compiled = None
            return self.eager(*args, **kwargs)
        self.verified = True
        return out


def make_kernel(compile: bool, function: Callable = int8_linear) -> Callable:
    """``function`` (:func:`int8_linear`), compiled with inductor (dynamic shapes) if ``compile``."""
    if not compile:
        return function
    return _FirstCallFallback(torch.compile(function, dynamic=True), function)


def make_kernels(compile: bool, integer_backward: bool) -> IntegerKernels:
    """The forward kernel and, if ``integer_backward``, the integer backward, both compiled if
    ``compile``."""
    return IntegerKernels(make_kernel(compile),
                          make_kernel(compile, int8_grad_input) if integer_backward else None)


def _linear_reason(module, min_in: int, min_out: int) -> str:
    """'' if a dense-layer wrapper can run the integer kernel, else why not."""
    if module.weight_names != ["weight"]:
        return "weight not quantized (kept FP32)"
    if module.group_size is not None:
        return (f"grouped weight scales (group size {module.group_size}) vary along K and cannot "
                "be applied after an int32 GEMM")
    layer = dense_layer(module)
    if layer.in_features < min_in or layer.out_features < min_out:
        return (f"K={layer.in_features}, N={layer.out_features}: below K>={min_in}, N>={min_out}, "
                "where per-row activation quantization costs more than the int8 GEMM saves")
    return ""


def _activation_note(module) -> str:
    quantizer = module.input_quantizers[0]
    if isinstance(quantizer, ActivationQuantizer):
        return (f"static {quantizer.method.value} {quantizer.num_bits}-bit activation grid "
                "replaced by dynamic per-row int8")
    return "activations were FP32 (weight-only file): now dynamic per-row int8 in this layer"


def enable_integer_kernels(model: torch.nn.Module, compile: bool = True,
                           min_in_features: int = MIN_IN_FEATURES,
                           min_out_features: int = MIN_OUT_FEATURES, min_macs: int = MIN_MACS,
                           contiguous_weight: bool = False, integer_backward: bool = True,
                           require_speedup: bool = True) -> IntegerKernelReport:
    """Switch eligible ``QuantizedModule`` wrappers of ``model`` to int8 GEMMs, in place.

    Eligible: dense-layer wrappers (``DENSE_KINDS``) with per-output-channel (or per-tensor) weight scales and
    K >= ``min_in_features``, N >= ``min_out_features``; at run time calls of fewer than
    ``min_macs`` multiply-accumulates (rows x K x N) take the fake-quant path.
    compile: fuse the quant/dequant passes with ``torch.compile`` (falls back to eager with a
    warning if compilation fails). contiguous_weight: keep a (K, N) contiguous int8 copy instead
    of a transposed view of the stored (N, K) int8 weight (measured: no faster).
    integer_backward: the gradient to the layer's input (forces) by an int8 GEMM too, its rows
    quantized like activations (:func:`int8_grad_input`); else the float product.
    If ``torch._int_mm`` does not run here, or (with ``require_speedup``) its measured speed
    (:func:`int_mm_speedup`) is below :data:`MIN_INT8_SPEEDUP` times float32's, nothing is
    switched and a warning is issued: the model keeps its fake-quant path, which is no slower.
    With ``require_speedup`` each switched layer shape's kernels are also timed against float32
    at :data:`PROBE_ROWS` (:func:`measure_row_rule`, once per shape), and each call runs int8
    only in the directions (forward, backward) that won at its size.
    ``require_speedup=False`` switches anyway, int8 at every size (numerics studies, tests).
    """
    device = next(iter(model.buffers()), torch.empty(0)).device
    support = probe_int_mm(device)
    wrappers = [(p, m) for p, m in model.named_modules() if isinstance(m, QuantizedModule)]
    def nothing_switched(backend: str, why: str) -> IntegerKernelReport:
        message = f"{why}; the model keeps fake quantization"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return IntegerKernelReport(backend, {}, {p: message for p, _ in wrappers}, [message])

    if not support.available:
        return nothing_switched("none (fake quantization)",
                                f"no usable integer GEMM (torch._int_mm: {support.reason})")
    speedup = int_mm_speedup(device) if require_speedup else None
    if speedup is not None and speedup < MIN_INT8_SPEEDUP:
        return nothing_switched("none (int8 slower than float32 here)",
                                f"int8 GEMMs run at {speedup:.2g}x float32 speed on this machine "
                                f"(below {MIN_INT8_SPEEDUP}x; CPUs with AVX512-VNNI, AVX-VNNI or "
                                "AMX are faster)")
    kernels = make_kernels(compile, integer_backward)
    backend = ("torch._int_mm + " + ("compiled" if compile else "eager") + " quant/dequant"
               + (", int8 backward" if integer_backward else ", float backward"))
    report = IntegerKernelReport(backend, settings={"min_in_features": min_in_features,
                                                    "min_out_features": min_out_features,
                                                    "min_macs": min_macs})
    forget_float_graph(model)
    rules: dict[tuple[int, int], RowRule] = {}
    for path, module in wrappers:
        module.integer_forward = None
        if module.kind not in DENSE_KINDS:
            report.kept[path] = _NOT_SWITCHED.get(module.kind, f"no integer kernel for {module.kind}")
            continue
        reason = _linear_reason(module, min_in_features, min_out_features)
        if reason:
            report.kept[path] = reason
            continue
        layer = dense_layer(module)
        shape = (layer.in_features, layer.out_features)
        if require_speedup and shape not in rules:
            rules[shape] = measure_row_rule(kernels, *shape, device)
        rule = rules.get(shape)
        if rule is not None and not any(rule.forward + rule.backward):
            report.kept[path] = (f"K={shape[0]}, N={shape[1]}: int8 measured slower than float32 "
                                 f"in both directions at rows {', '.join(map(str, PROBE_ROWS))}")
            continue
        module.integer_forward = IntegerLinear(module, kernels, min_macs, support.needs_padding,
                                               contiguous_weight, rule)
        report.switched[path] = (f"K={layer.in_features} N={layer.out_features}, "
                                 f"{module.weight_bits}-bit weights as int8; {_activation_note(module)}"
                                 + (f"; {rule.describe()}" if rule else ""))
    return report


def disable_integer_kernels(model: torch.nn.Module) -> int:
    """Return every wrapper to fake quantization; the number of wrappers that were switched."""
    count = 0
    forget_float_graph(model)
    for module in model.modules():
        if isinstance(module, QuantizedModule) and module.integer_forward is not None:
            module.integer_forward = None
            count += 1
    return count
