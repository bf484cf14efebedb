"""The float computation of a quantized model without its wrappers, for the hot path of dynamics.

With activation rounding off, a ``QuantizedModule`` computes exactly ``inner(*args)``: its
inner module already holds the dequantized weights. Calling the wrappers anyway costs Python
per call (quantizer dispatch, attribute fall-backs) that shows at small systems. ``float_graph``
returns a view of the model in which every such wrapper is replaced by its inner module: the
same tensors (parameters, buffers, hooks are shared, nothing is copied), one shallow clone per
container on the way down, so the quantized model itself is untouched. Wrappers with an integer
kernel installed (``integer_forward``) stay, because they compute something else.
"""

from __future__ import annotations

import copy
import types
import weakref

from torch import nn

from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.modules import QuantizedModule

__all__ = ["float_graph", "forget_float_graph", "rounds_activations"]

_GRAPHS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
"""model -> (its train/eval mode when built, its float graph or None for the model itself,
whether it has activation quantizers). Kept outside the model, so that copies and saved files
never carry a stale view."""


def _unwrapped(module: nn.Module) -> nn.Module:
    if isinstance(module, QuantizedModule) and module.integer_forward is None:
        return _unwrapped(module.inner)
    children = {name: (_unwrapped(child) if child is not None else None)
                for name, child in module._modules.items()}
    if all(children[name] is child for name, child in module._modules.items()):
        return module
    clone = copy.copy(module)    # shares _parameters, _buffers and hook dicts with ``module``
    clone._modules = children
    for name, value in vars(clone).items():   # methods set on the instance act on the clone
        if isinstance(value, types.MethodType) and value.__self__ is module:
            setattr(clone, name, types.MethodType(value.__func__, clone))
    return clone


def float_graph(model: nn.Module) -> nn.Module:
    """``model`` with every ``QuantizedModule`` (no integer kernel) replaced by its inner module.

    Numerically the model with activation rounding off; for FP32 models ``model`` itself. Built
    once per model and kept beside it (not in it: nothing enters copies or files); rebuilt after
    a change of train/eval mode, and after :func:`forget_float_graph` (which installing or
    removing integer kernels calls).
    """
    graph = _entry(model)[1]
    return model if graph is None else graph


def rounds_activations(model: nn.Module) -> bool:
    """Whether ``model`` has activation quantizers (an A8 file), from the same cached entry, so
    that the hot path need not walk the module tree per call."""
    return _entry(model)[2]


def _entry(model: nn.Module) -> tuple:
    cached = _GRAPHS.get(model)
    if cached is None or cached[0] != model.training:
        graph = _unwrapped(model)
        rounds = any(isinstance(m, ActivationQuantizer) for m in model.modules())
        cached = _GRAPHS[model] = (model.training, None if graph is model else graph, rounds)
    return cached


def forget_float_graph(model: nn.Module) -> None:
    """Drop the view :func:`float_graph` keeps, after the model's wrappers changed."""
    _GRAPHS.pop(model, None)
