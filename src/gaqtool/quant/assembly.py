"""A quantized model whose modules and grids can be switched between bit levels in place,
for measuring many bit maps without re-quantizing (``gaqtool.quant.mixed_precision``)."""

from __future__ import annotations

import torch
from torch import nn

from gaqtool.config import FP32_BITS
from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.modules import QuantizedModule

__all__ = ["MapAssembly", "GRID_BUFFERS"]

GRID_BUFFERS = ("scalar_scale", "scalar_zero_point", "norm_scale", "tensor_scale")
"""Calibrated buffers of an ``ActivationQuantizer`` (those its method has)."""


class MapAssembly:
    """The start model, changed in place, whose modules and grids can be set to any ladder
    level without rebuilding: weights are swapped in from the donor models (or the FP32
    parent), grid buffers from recalibrations (32: the grid is switched off). Set back to the
    start levels it is the start model again (its integer buffers are never touched)."""

    def __init__(self, start: nn.Module, fp32: nn.Module):
        self.model = start
        self.weights: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        self.grids: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        fp32_params = dict(fp32.named_parameters())
        for path, module in self.model.named_modules():
            if isinstance(module, QuantizedModule) and module.weight_names:
                self.weights[path] = {FP32_BITS: {n: fp32_params[f"{path}.{n}"].detach().clone().float()
                                                  for n in module.weight_names}}
        for path, module in self.model.named_modules():
            if isinstance(module, ActivationQuantizer):
                self.grids[path] = {}

    def add_weight_donor(self, donor: nn.Module) -> None:
        """Weights of each module at the donor's bits, unless a donor added earlier gave them
        (the start model comes first: a module it already has at 8 bits keeps its own)."""
        for path in self.weights:
            module = donor.get_submodule(path)
            self.weights[path].setdefault(module.weight_bits, {
                n: getattr(module.inner, n).detach().clone() for n in module.weight_names})

    def add_grid_donor(self, donor: nn.Module) -> None:
        """Calibrated buffers of each grid at the donor's bits (the first donor of those bits wins)."""
        for path in self.grids:
            quantizer = donor.get_submodule(path)
            self.grids[path].setdefault(quantizer.num_bits, {
                k: getattr(quantizer, k).detach().clone() for k in GRID_BUFFERS if hasattr(quantizer, k)})

    def set(self, name: str, bits: int) -> None:
        if name in self.weights:
            inner = self.model.get_submodule(name).inner
            for weight_name, value in self.weights[name][bits].items():
                inner._buffers[weight_name] = value
            return
        quantizer = self.model.get_submodule(name)
        if bits == FP32_BITS:
            quantizer.mode = "off"
            return
        for key, value in self.grids[name][bits].items():
            getattr(quantizer, key).copy_(value)
        quantizer.num_bits, quantizer.mode = bits, "quantize"
