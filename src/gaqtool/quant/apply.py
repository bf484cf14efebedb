"""``quantize_model(model, config)``: swap every supported module for a ``QuantizedModule``
(the torchao ``quantize_`` pattern) and record every module left in FP32 with its reason.

Supported out of the box: ``e3nn.o3.Linear`` (per path), ``e3nn.o3.TensorProduct`` (internal
weights per instruction; inputs by irreps, including the edge spherical harmonics), e3nn
``FullyConnectedNet`` layers, ``torch.nn.Linear`` and ``torch.nn.Embedding``. A model backend
adds its own module kinds with ``register_handler`` (gaqtool's reference potential registers
its weightless ``ChannelwiseConvolution``, whose irreps inputs are quantized).

Which modules stay in FP32 follows the model's *roles* (``model.module_roles()``, see
``gaqtool.potential``): ``--keep-fp32 role:species_embedding`` names a role, any other value is
an fnmatch pattern of module paths. This package knows nothing of any particular model.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib
import types
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from e3nn import o3
from torch import nn

from gaqtool.config import FP32_BITS, ForceMode, QuantConfig
from gaqtool.errors import InputError
from gaqtool.potential import Prediction, autograd_prediction, predict_batch
from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.float_graph import float_graph, rounds_activations
from gaqtool.quant.modules import QuantizedModule

__all__ = ["QuantPlan", "quantize_model", "calibrate", "activation_quantizers", "HANDLERS", "fan_in",
           "register_handler", "module_roles", "activation_rounding_off", "set_force_mode",
           "conservative_prediction", "uses_conservative_forces", "dynamics_prediction",
           "ROLE_PREFIX", "grid_name"]

ROLE_PREFIX = "role:"

def grid_name(module_path: str, index: int) -> str:
    """Name of one quantized input (an activation grid): ``<module path>.input_quantizers.<i>``,
    the prefix of its tensors in the file."""
    return f"{module_path}.input_quantizers.{index}"


def _scalars(n: int) -> o3.Irreps:
    return o3.Irreps(f"{n}x0e")


def _is_fc_layer(module: nn.Module) -> bool:
    return type(module).__module__.startswith("e3nn.nn._fc") and type(module).__name__ == "_Layer"


# kind -> (matches(module), (input irreps per positional input, weight parameter names))
HANDLERS: dict[str, tuple[Callable[[nn.Module], bool], Callable[[nn.Module], tuple[list, list[str]]]]] = {
    "o3.Linear": (lambda m: isinstance(m, o3.Linear),
                  lambda m: ([m.irreps_in], ["weight"] if m.weight_numel > 0 else [])),
    # weightless products (e.g. the ElementwiseTensorProduct inside e3nn's Gate) are not matched
    "o3.TensorProduct": (lambda m: isinstance(m, o3.TensorProduct) and m.weight_numel > 0,
                         lambda m: ([m.irreps_in1, m.irreps_in2, None],
                                    ["weight"] if m.internal_weights and m.weight_numel > 0 else [])),
    "e3nn.FullyConnectedNet.layer": (_is_fc_layer, lambda m: ([_scalars(m.h_in)], ["weight"])),
    "nn.Linear": (lambda m: isinstance(m, nn.Linear),
                  lambda m: ([_scalars(m.in_features)], ["weight"])),
    "nn.Embedding": (lambda m: isinstance(m, nn.Embedding), lambda m: ([None], ["weight"])),
}


def register_handler(kind: str, matches: Callable[[nn.Module], bool],
                     describe: Callable[[nn.Module], tuple[list, list[str]]]) -> None:
    """Teach ``quantize_model`` a module kind: ``matches(module)`` says whether a module is of
    it, ``describe(module)`` gives (input irreps per positional input, or None for inputs not
    to quantize; names of the weight parameters). Kinds registered first are matched first;
    registering a kind again replaces it."""
    HANDLERS[kind] = (matches, describe)


def module_roles(model: nn.Module) -> dict[str, str]:
    """{module path: role} declared by the model (``module_roles()``), or {} if it has none."""
    declare = getattr(model, "module_roles", None)
    return dict(declare()) if callable(declare) else {}


def _keep_reason(path: str, roles: dict[str, str], patterns: tuple[str, ...]) -> str | None:
    """Why the module at ``path`` stays FP32 (a --keep-fp32 role or pattern), or None."""
    for pattern in patterns:
        if pattern.startswith(ROLE_PREFIX):
            role = pattern[len(ROLE_PREFIX):]
            if any(roles.get(prefix) == role for prefix in _prefixes(path)):
                return f"kept FP32 by role '{role}'"
        elif fnmatch.fnmatchcase(path, pattern):
            return f"kept FP32 by --keep-fp32 '{pattern}'"
    return None


def _prefixes(path: str) -> list[str]:
    """'a.b.c' -> ['a.b.c', 'a.b', 'a']: a role given to a module covers its submodules."""
    parts = path.split(".")
    return [".".join(parts[:k]) for k in range(len(parts), 0, -1)]


def fan_in(module: nn.Module, kind: str) -> int | None:
    """Inputs each output of a weighted layer mixes (None: not defined for this kind): input
    features of linear layers, the one-hot width (number of rows) of an embedding, the input
    channels of an o3.Linear."""
    if kind == "nn.Linear":
        return module.in_features
    if kind == "e3nn.FullyConnectedNet.layer":
        return module.h_in
    if kind == "nn.Embedding":
        return module.num_embeddings
    if kind == "o3.Linear":
        return module.irreps_in.num_irreps
    return None


def _weight_bits(module: nn.Module, kind: str, config: QuantConfig, wide: bool = False) -> int:
    """``config.small_fan_in_bits`` for layers with a small fan-in or kept wide (``wide``:
    ``config.keep_wide`` names them) when that is wider, else ``config.weight_bits``."""
    inputs = fan_in(module, kind)
    small = inputs is not None and inputs <= config.small_fan_in
    if config.small_fan_in_bits and (small or (wide and config.small_fan_in_bits > config.weight_bits)):
        return config.small_fan_in_bits
    return config.weight_bits


@dataclass
class QuantPlan:
    """What ``quantize_model`` did: one entry per module (quantized or kept FP32) with reasons.

    entries: path -> {"kind", "status": "quantized"|"fp32", "reason", "weight_bits" (32: FP32
                      weights by the bit map), "num_weights", "inputs": [irreps or None],
                      "input_bits": [bits of each input's grid, 32 = FP32, or None]}
    unquantized_parameters: parameter/buffer paths stored as float32, with a reason each
    """

    entries: dict[str, dict] = field(default_factory=dict)
    unquantized_parameters: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"entries": self.entries, "unquantized_parameters": self.unquantized_parameters}


def _builtin_handlers() -> None:
    """Register the reference potential's module kinds (its backend registers them on import;
    imported by name here, so that quant/ does not depend on models/)."""
    importlib.import_module("gaqtool.backends.reference")


def _kind_of(module: nn.Module) -> str | None:
    for kind, (matches, _) in HANDLERS.items():
        if matches(module):
            return kind
    return None


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def quantize_model(model: nn.Module, config: QuantConfig) -> tuple[nn.Module, QuantPlan]:
    """Quantize ``model`` in place (weights now; activation scales by ``calibrate``)."""
    _builtin_handlers()
    plan = QuantPlan()
    roles = module_roles(model)
    swaps: list[tuple[str, nn.Module, str]] = []
    skip_below: list[str] = []
    for path, module in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in skip_below):
            continue
        kind = _kind_of(module)
        reason = _keep_reason(path, roles, config.keep_fp32)
        if reason is not None and (kind is not None or module._parameters):
            plan.entries[path] = {"kind": kind or type(module).__name__, "status": "fp32",
                                  "reason": reason}
            if kind is not None:
                plan.entries[path]["num_weights"] = int(sum(
                    getattr(module, n).numel() for n in HANDLERS[kind][1](module)[1]))
            skip_below.append(path)
            continue
        if kind is not None:
            swaps.append((path, module, kind))
            skip_below.append(path)
        elif any(p is not None for p in module._parameters.values()):
            names = ", ".join(n for n, p in module._parameters.items() if p is not None)
            plan.entries[path] = {"kind": type(module).__name__, "status": "fp32",
                                  "reason": f"no quantization handler for {type(module).__name__} "
                                            f"(parameters: {names})"}
    weight_overrides, grid_overrides = config.weight_bits_of, config.activation_bits_of
    for path, module, kind in swaps:
        input_irreps, weight_names = HANDLERS[kind][1](module)
        bits = weight_overrides.pop(path, None)
        if bits is None:
            bits = _weight_bits(module, kind, config, _keep_reason(path, roles, config.keep_wide) is not None)
        quantizes = config.quantizes_activations
        input_bits = [grid_overrides.pop(grid_name(path, i), config.activation_bits)
                      if (irreps is not None and quantizes) else None for i, irreps in enumerate(input_irreps)]
        num_weights = int(sum(getattr(module, n).numel() for n in weight_names))
        wrapped = QuantizedModule(module, kind, input_irreps, [] if bits == FP32_BITS else weight_names,
                                  config, bits, input_bits)
        _set_submodule(model, path, wrapped)
        reason = "" if weight_names else "no weights: inputs quantized only"
        if weight_names and bits == FP32_BITS:
            reason = "weights FP32 by the bit map"
        plan.entries[path] = {
            "kind": kind, "status": "quantized", "reason": reason,
            "weight_bits": bits if weight_names else None,
            "num_weights": num_weights,
            "inputs": [str(o3.Irreps(i).simplify()) if (i is not None and quantizes) else None
                       for i in input_irreps],
            "input_bits": input_bits,
        }
    if weight_overrides or grid_overrides:
        unknown = sorted(weight_overrides) + sorted(grid_overrides)
        raise InputError(f"the bit map names {len(unknown)} module(s) or grid(s) this model does not "
                         f"quantize, e.g. '{unknown[0]}'",
                         hint="module paths as --show-modules lists them; grids as "
                              "<module>.input_quantizers.<i>")
    set_force_mode(model, config.force_mode)
    for name, tensor in model.state_dict().items():
        if name.endswith("_int") or name.endswith("_scale") or ".input_quantizers." in name:
            continue
        module_path, _, leaf = name.rpartition(".")
        owner = module_path.removesuffix(".inner")
        entry = plan.entries.get(owner)
        if entry and entry["status"] == "quantized" and leaf in model.get_submodule(owner).weight_names:
            continue
        reason = "bias (kept FP32)" if leaf == "bias" else (
            entry["reason"] if entry and (entry["status"] == "fp32" or entry.get("weight_bits") == FP32_BITS)
            else "not a weight of a supported module")
        plan.unquantized_parameters[name] = reason
    return model, plan


def activation_quantizers(model: nn.Module) -> list[ActivationQuantizer]:
    return [m for m in model.modules() if isinstance(m, ActivationQuantizer)]


@contextlib.contextmanager
def activation_rounding_off(model: nn.Module):
    """Temporarily run ``model`` with every activation quantizer passing values through."""
    quantizers = activation_quantizers(model)
    modes = [q.mode for q in quantizers]
    for q in quantizers:
        q.mode = "off"
    try:
        yield model
    finally:
        for q, mode in zip(quantizers, modes):
            q.mode = mode


def set_force_mode(model: nn.Module, mode: ForceMode | str) -> nn.Module:
    """Choose how forces of an activation-quantized ``model`` are computed (see ``ForceMode``),
    at quantization time or later for a loaded file. FP32 and weight-only models (no activation
    quantizer) have exact forces either way and are left as they are. Returns ``model``."""
    mode = ForceMode(mode)
    if not activation_quantizers(model):
        return model
    if mode == ForceMode.CONSERVATIVE:
        model.compute_prediction = types.MethodType(conservative_prediction, model)
    else:
        model.__dict__.pop("compute_prediction", None)
    return model


def conservative_prediction(model: nn.Module, batch, stress: bool = False, create_graph: bool = False
                            ) -> Prediction:
    """Force mode 'conservative' as evaluated (``eval``, reports, LEE): E_q (M,) eV from the
    activation-quantized model (no gradient) beside the forces (and stress) of E_s, the same
    model with activation rounding off, which are exactly conservative. Two forward passes."""
    with activation_rounding_off(model):
        smooth = autograd_prediction(model, batch, stress, create_graph)
    with torch.no_grad():
        energies = model(batch)
    return Prediction(energies, smooth.forces, smooth.stress)


def uses_conservative_forces(model: nn.Module) -> bool:
    """Whether ``model`` is activation-quantized with force mode 'conservative'."""
    custom = getattr(model, "compute_prediction", None)
    return getattr(custom, "__func__", None) is conservative_prediction


def dynamics_prediction(model: nn.Module, batch, stress: bool = False, quantized_energy: bool = False
                        ) -> tuple[Prediction, torch.Tensor | None]:
    """The one potential that dynamics integrate: (energies (M,) eV, forces = -dE/dx (n, 3)
    eV/A, stress) of the same energy, and optionally E_q (M,) eV.

    Force mode 'conservative': the energy is E_s (activation rounding off) and forces and stress
    are its derivatives, so E + E_kin is what NVE conserves; one energy + force pass, and no
    activation rounding on the hot path. E_q, the activation-quantized energy that ``eval``
    reports, costs one more forward pass and is computed only when ``quantized_energy``.
    Otherwise (FP32, weight-only, force mode 'ste') the model as stored, and E_q is its energy.
    """
    conservative = uses_conservative_forces(model)
    if conservative or not rounds_activations(model):   # the float graph is the model's energy
        prediction = autograd_prediction(float_graph(model), batch, stress)
    else:                                                # force mode 'ste': the model as stored
        prediction = predict_batch(model, batch, stress)
    if not quantized_energy:
        return prediction, None
    if not conservative:
        return prediction, prediction.energies.detach()
    with torch.no_grad():
        return prediction, model(batch)


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable, run: Callable[[nn.Module, object], object],
              on_batch: Callable[[object], None] | None = None) -> int:
    """Collect activation statistics with ``run(model, batch)`` on every batch, then fix scales.

    Returns the number of activation quantizers calibrated (0 for weight-only models).
    """
    quantizers = activation_quantizers(model)
    if not quantizers:
        return 0
    for q in quantizers:
        q.mode = "calibrate"
    for batch in batches:
        run(model, batch)
        if on_batch:
            on_batch(batch)
    for q in quantizers:
        q.finish_calibration()
    return len(quantizers)
