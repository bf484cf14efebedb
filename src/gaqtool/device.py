"""Where a model runs: device selection and one rule for data, which follows the model.

``select_device('cpu' | 'cuda' | 'cuda:N' | 'auto')`` checks the request against this machine
before any work starts (a one-line ``InputError`` where CUDA is missing). ``place_model`` moves a
potential's parameters and buffers there and hooks its forward: a ``Batch`` argument is copied
to the model's device on the way in and the energies are copied back to the batch's device on
the way out. Everything outside the model (data loading, neighbour lists, losses, metrics)
stays on the CPU and needs no device logic of its own; ``Tensor.to`` is differentiable, so
forces (-dE/dx) and stress reach the caller's positions and cell by autograd as before.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from gaqtool.errors import InputError

__all__ = ["DEVICE_CHOICES", "select_device", "place_model", "model_device"]

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"


def select_device(name: str) -> torch.device:
    """The torch device for ``name``: 'cpu', 'cuda' / 'cuda:N' (checked to exist), or 'auto'
    (the first CUDA device if there is one, else the CPU)."""
    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise InputError(f"unknown device '{name}'", hint=f"use one of {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise InputError(f"device '{name}' is not supported", hint=f"use one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        reason = ("this torch build has no CUDA support" if torch.version.cuda is None
                  else "no CUDA device is visible")
        raise InputError(f"--device {name}: {reason}", hint="use --device cpu (or auto)")
    index = 0 if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                         hint=f"choose cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (the CPU for a model with neither)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)  # per forward: no lists
    return torch.device("cpu") if tensor is None else tensor.device


def _batch_to_model(module: nn.Module, args: tuple):
    if not args or not hasattr(args[0], "positions"):
        return None
    batch, device = args[0], model_device(module)
    module._caller_device = batch.positions.device
    if batch.positions.device == device:
        return None
    return (batch.to(device), *args[1:])


def _energies_to_caller(module: nn.Module, args: tuple, output):
    caller = getattr(module, "_caller_device", None)
    if isinstance(output, torch.Tensor) and caller is not None and output.device != caller:
        return output.to(caller)
    return None


def place_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` (a potential: ``forward(batch) -> (M,)`` energies) to ``device`` and make
    it accept batches from anywhere (see the module docstring). Idempotent; returns ``model``."""
    model.to(torch.device(device))
    if not getattr(model, "_device_hooks", False):
        model.register_forward_pre_hook(_batch_to_model)
        model.register_forward_hook(_energies_to_caller)
        model._device_hooks = True
    return model
