"""``QuantizedModule``: wraps one module with quantized weights and quantized inputs.

The wrapped module keeps its own forward; its weight parameters are replaced by buffers
holding the dequantized values (fake quantization), while the integer values and scales are
kept beside them (``<name>_int``, ``<name>_scale``) for packing and for integer kernels.
``irreps_in``/``irreps_out`` of the wrapped module are kept, so e3nn's equivariance tests
apply to the wrapper.

Integer kernels hook in through one optional attribute: ``integer_forward`` (default None). When
set (by ``gaqtool.kernels.enable_integer_kernels``) ``forward(*args)`` returns
``integer_forward(self, *args, **kwargs)`` instead of quantizing the inputs and calling ``inner``.
It is a plain callable, not a submodule, so state dicts and saved files do not change.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from gaqtool.config import FP32_BITS, QuantConfig, WeightClip
from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.weights import dequantize_parameter, quantize_parameter

__all__ = ["QuantizedModule"]


class QuantizedModule(nn.Module):
    """Quantized wrapper of ``inner``.

    kind:         handler name, e.g. 'o3.Linear' (recorded in the file)
    input_irreps: one entry per positional tensor input: irreps to quantize it with, or None
    weight_names: parameters of ``inner`` to quantize (weight_bits, symmetric); empty: the
                  weights stay float32 parameters of ``inner``
    input_bits:   bits of each input's grid (None: ``config.activation_bits``; 32: that input
                  stays float32, no quantizer)
    """

    def __init__(self, inner: nn.Module, kind: str, input_irreps: list[o3.Irreps | None],
                 weight_names: list[str], config: QuantConfig, weight_bits: int | None = None,
                 input_bits: list[int | None] | None = None):
        super().__init__()
        self.inner = inner
        self.kind = kind
        self.weight_names = list(weight_names)
        self.weight_bits = int(weight_bits if weight_bits is not None else config.weight_bits)
        self.group_size = config.group_size
        self.per_tensor = config.method.value == "naive"
        self.clip_search = config.weight_clip == WeightClip.MSE
        quantize_inputs = config.quantizes_activations
        input_bits = list(input_bits) if input_bits is not None else [None] * len(input_irreps)
        self.input_quantizers = nn.ModuleList(
            ActivationQuantizer(irreps, config, bits)
            if (irreps is not None and quantize_inputs and bits != FP32_BITS) else nn.Identity()
            for irreps, bits in zip(input_irreps, input_bits))
        for attr in ("irreps_in", "irreps_out", "irreps_in1", "irreps_in2"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))
        for name in self.weight_names:
            values, scales = quantize_parameter(inner, name, self.weight_bits, self.group_size, self.per_tensor,
                                                clip_search=self.clip_search)
            self.register_buffer(f"{name}_int", values)
            self.register_buffer(f"{name}_scale", scales)
            self._set_weight(name, dequantize_parameter(inner, name, values, scales, self.group_size,
                                                        self.per_tensor))

    def _set_weight(self, name: str, value: torch.Tensor) -> None:
        """Replace parameter ``inner.<name>`` by a buffer holding ``value`` (no gradient)."""
        if name in self.inner._parameters:
            del self.inner._parameters[name]
            self.inner.register_buffer(name, value)
        else:
            getattr(self.inner, name).copy_(value)

    @torch.no_grad()
    def load_quantized_weight(self, name: str, values: torch.Tensor, scales: torch.Tensor) -> None:
        """Install integer ``values`` (parameter shape, int8) and flat ``scales`` read from a file."""
        scales = scales.float()
        getattr(self, f"{name}_int").copy_(values)
        getattr(self, f"{name}_scale").copy_(scales)
        self._set_weight(name, dequantize_parameter(self.inner, name, values, scales, self.group_size,
                                                    self.per_tensor))

    def __getattr__(self, name: str):
        """Fall back to the wrapped module's attributes (e.g. ``num_paths``, ``irreps_sh``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self._modules.get("inner")
            if inner is None:
                raise
            return getattr(inner, name)

    def activation_quantizers(self) -> list[ActivationQuantizer]:
        return [q for q in self.input_quantizers if isinstance(q, ActivationQuantizer)]

    integer_forward = None  # optional (self, *args, **kwargs) -> output; see the module docstring

    def forward(self, *args, **kwargs):
        if self.integer_forward is not None:
            return self.integer_forward(self, *args, **kwargs)
        quantizers = list(self.input_quantizers)
        args = tuple(quantizers[i](a) if i < len(quantizers) and isinstance(a, torch.Tensor) else a
                     for i, a in enumerate(args))
        return self.inner(*args, **kwargs)
