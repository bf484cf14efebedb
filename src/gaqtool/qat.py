"""Symmetry-aware quantization-aware fine-tuning (QAT) from the same ``QuantConfig`` as PTQ.

prepare: PTQ model (weights quantized, activations calibrated) -> trainable float weights
  (initialised from the FP32 parent) fake-quantized on every forward with learned step sizes
  (LSQ), learnable activation scales (scalar grids and MDDQ norm grids).
train:   energy + force loss against the FP32 parent's predictions (distillation; or the DFT
  labels), + optional LEE penalty with random rotations; scalar features
  are quantized from the start, l>0 features only after ``vector_warmup`` epochs.
convert: integer weights from the trained floats and learned scales -> the same
  ``QuantizedModule`` state as PTQ, written in the same packed file format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from gaqtool.config import ForceMode, QATTargets, QuantConfig, WeightRounding
from gaqtool.data.frames import Frames
from gaqtool.data.graph import Batch, iterate_batches
from gaqtool.errors import InputError
from gaqtool.metrics.accuracy import predict
from gaqtool.metrics.equivariance import haar_rotations
from gaqtool.potential import energy_and_forces
from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.apply import set_force_mode
from gaqtool.quant.modules import QuantizedModule
from gaqtool.quant.primitives import fake_quantize_lsq, quantize
from gaqtool.quant.weights import dequantize_parameter, scale_index_map, to_storage_precision
from gaqtool.training import TrainOptions, TrainResult, energy_force_loss, train_model
from gaqtool.workflow import calibration_subset, correct_energy_offset, quantize_loaded

__all__ = ["QATOptions", "QATTargets", "prepare_qat", "convert_qat", "set_vector_quantization",
           "set_activation_quantization", "recalibrate_activations", "run_qat", "teacher_targets"]


@dataclass(frozen=True)
class QATOptions:
    """QAT schedule. ``vector_warmup``: epochs with l>0 activations left unquantized;
    ``activation_warmup``: epochs with no activation quantized at all (weights only), before the
    scalars (and, after ``vector_warmup``, the l>0 features) are switched on; at the switch the
    activation grids are recalibrated on the fine-tuned weights.

    ``targets``: what the training loss fits: ``"teacher"`` (default), the FP32 parent's own
    energies and forces on the training frames (distillation: the loss then measures the
    quantization error alone, not the parent's irreducible error against DFT); or ``"labels"``,
    the reference DFT labels. Validation and model selection always use the labels.
    ``energy_weight``: weight of the per-atom energy MSE (eV^2) next to the force MSE ((eV/A)^2)
    in the loss and the selection score.
    ``ema_decay``: decay of the exponential moving average of the weights that is validated and
    kept (per step; 0.9 averages about 10 steps, 0.99 about 100).
    """

    epochs: int = 10
    vector_warmup: int = 1
    activation_warmup: int = 0
    lee_weight: float = 0.0
    tangent_projection: bool = True
    learning_rate: float = 5e-4
    batch_size: int = 8
    seed: int = 0
    targets: str = "teacher"
    energy_weight: float = 1.0
    ema_decay: float = 0.9

    @property
    def fully_quantized_from(self) -> int:
        """First epoch with every activation (scalars and l>0) quantized."""
        return max(self.vector_warmup, self.activation_warmup)


def _weight_hook(module: QuantizedModule, _inputs) -> None:
    """Forward pre-hook: install LSQ fake-quantized weights into the wrapped module."""
    for name in module.weight_names:
        weight = getattr(module, f"qat_{name}")
        scales = getattr(module, f"qat_{name}_log_scale").exp()[getattr(module, f"qat_{name}_index")]
        zero = torch.zeros((), dtype=torch.int32)
        module.inner._buffers[name] = fake_quantize_lsq(weight, scales, zero, module.weight_bits, symmetric=True)


def prepare_qat(fp32: nn.Module, config: QuantConfig, calibration: Frames,
                tangent_projection: bool = True, start: nn.Module | None = None) -> nn.Module:
    """A QAT-ready copy of ``fp32``: PTQ-calibrated, with trainable weights and scales.

    Forces during QAT are always straight-through (``ForceMode.STE``): training must see the
    rounding; ``run_qat`` gives the converted model ``config.force_mode`` back.
    The learned weight step sizes start from ``config.weight_clip``; min-max starts are
    recommended (measured: 3 short epochs reached 59 meV/A from min-max, 74 from MSE clipping).
    The latent weights start from the FP32 weights, or, with ``config.weight_rounding`` gptq,
    from the GPTQ-rounded ones (on the grid of those steps).
    ``start``: the model ``quantize_loaded(fp32, config, calibration)`` already returned (it is
    made trainable in place), so a caller that has one does not calibrate twice.
    """
    model = start if start is not None else quantize_loaded(fp32, config, calibration)[0]
    set_force_mode(model, ForceMode.STE)  # training differentiates through the rounding
    originals = dict(fp32.named_parameters())
    for path, module in model.named_modules():
        if isinstance(module, QuantizedModule):
            for name in module.weight_names:
                if config.weight_rounding == WeightRounding.GPTQ:  # start from the GPTQ-rounded weights
                    original = getattr(module.inner, name).detach().clone().float()
                else:
                    original = originals[f"{path}.{name}"].detach().clone().float()
                module.register_parameter(f"qat_{name}", nn.Parameter(original))
                module.register_parameter(f"qat_{name}_log_scale",
                                          nn.Parameter(getattr(module, f"{name}_scale").clone().log()))
                module.register_buffer(f"qat_{name}_index", scale_index_map(
                    module.inner, name, module.group_size, module.per_tensor), persistent=False)
            if module.weight_names:
                module._qat_hook = module.register_forward_pre_hook(_weight_hook)
        if isinstance(module, ActivationQuantizer) and module.mode == "quantize":
            if module.method.value != "gaq":
                continue  # naive grids are not learned (one per-tensor scale, kept as calibrated)
            module.learnable, module.tangent_projection = True, tangent_projection
            for key in ("scalar_scale", "norm_scale"):  # learned as log-scales: positive, relative steps
                module.register_parameter(f"log_{key}", nn.Parameter(getattr(module, key).clone().log()))
    return model


def set_vector_quantization(model: nn.Module, enabled: bool) -> None:
    """Switch quantization of l>0 activations on or off (the vector warm-up)."""
    for module in model.modules():
        if isinstance(module, ActivationQuantizer):
            module.quantize_vectors = enabled


def set_activation_quantization(model: nn.Module, enabled: bool) -> None:
    """Switch every calibrated activation quantizer on ('quantize') or off (weights-only phase)."""
    for module in model.modules():
        if isinstance(module, ActivationQuantizer) and module.mode in ("quantize", "off"):
            module.mode = "quantize" if enabled else "off"


@torch.no_grad()
def recalibrate_activations(model: nn.Module, frames: Frames, batch_size: int = 8) -> int:
    """Re-measure every learnable activation grid with the model's current (fine-tuned) weights
    and restart its learned step from there. Returns the number of quantizers recalibrated.

    Used when activations are switched on after a weights-only warm-up: the grids calibrated on
    the PTQ model no longer fit the activations of the fine-tuned weights.
    """
    quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer) and m.learnable]
    for quantizer in quantizers:
        quantizer.mode = "calibrate"
    for batch in iterate_batches(frames, batch_size, model.cutoff):
        model(batch)
    for quantizer in quantizers:
        quantizer.finish_calibration()
        for key in ("scalar_scale", "norm_scale"):
            getattr(quantizer, f"log_{key}").copy_(getattr(quantizer, key).log())
    return len(quantizers)


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """Freeze a QAT model into plain PTQ form (integer weights + scales as buffers), in place."""
    for module in model.modules():
        if isinstance(module, QuantizedModule) and hasattr(module, "_qat_hook"):
            module._qat_hook.remove()
            del module._qat_hook
            for name in module.weight_names:
                weight = module._parameters.pop(f"qat_{name}").detach()
                scales = to_storage_precision(module._parameters.pop(f"qat_{name}_log_scale").detach().exp())
                index = module._buffers.pop(f"qat_{name}_index")
                zero = torch.zeros((), dtype=torch.int32)
                values = quantize(weight, scales[index], zero, module.weight_bits, symmetric=True).to(torch.int8)
                getattr(module, f"{name}_int").copy_(values)
                getattr(module, f"{name}_scale").copy_(scales)
                module.inner._buffers[name] = dequantize_parameter(
                    module.inner, name, values, scales, module.group_size, module.per_tensor)
        if isinstance(module, ActivationQuantizer):
            module.learnable, module.quantize_vectors = False, True
            if module.mode == "off":  # still in an activation warm-up: deploy quantized
                module.mode = "quantize"
            for key in ("scalar_scale", "norm_scale"):
                if f"log_{key}" in module._parameters:
                    getattr(module, key).copy_(to_storage_precision(module._parameters.pop(f"log_{key}").detach().exp()))
    return model.eval()


def qat_loss(options: QATOptions, rng: np.random.Generator) -> Callable[[nn.Module, Batch], torch.Tensor]:
    """Energy + force loss; with ``lee_weight`` > 0 also |F(Rx) - R F(x)|^2 for a random R."""

    def loss(model: nn.Module, batch: Batch) -> torch.Tensor:
        energies, forces = energy_and_forces(model, batch, create_graph=True)
        total = energy_force_loss(energies, forces, batch, options.energy_weight, 1.0)
        if options.lee_weight > 0:
            rotation = torch.tensor(haar_rotations(1, int(rng.integers(1 << 31)))[0], dtype=forces.dtype)
            cell = None if batch.cell is None else batch.cell @ rotation.T  # lattice vectors are rows
            _, rotated = energy_and_forces(model, replace(batch, positions=batch.positions @ rotation.T, cell=cell),
                                           create_graph=True)
            total = total + options.lee_weight * ((rotated - forces @ rotation.T) ** 2).mean()
        return total

    return loss


def teacher_targets(fp32: nn.Module, frames: Frames) -> Frames:
    """``frames`` with energies (eV) and forces (eV/A) replaced by the FP32 parent's predictions."""
    pred = predict(fp32.eval(), frames)
    labelled = frames.with_labels(pred.energies.copy(), [f.copy() for f in pred.forces], pred.stresses)
    labelled.source = f"FP32 teacher predictions on {frames.source}"
    return labelled


def run_qat(fp32: nn.Module, config: QuantConfig, train: Frames, val: Frames, calibration: Frames,
            options: QATOptions, on_step: Callable[[dict], None] | None = None,
            start: nn.Module | None = None) -> TrainResult:
    """prepare -> train (vector warm-up, optional LEE penalty) -> convert. Returns the converted model.

    ``start``: the PTQ model of the same ``config`` and ``calibration`` if the caller has it
    (used in place, see ``prepare_qat``)."""
    if options.fully_quantized_from >= options.epochs:
        raise InputError(f"QAT warm-up ({options.fully_quantized_from} epochs) must be "
                         f"shorter than the {options.epochs} QAT epochs",
                         hint="raise --qat-epochs or lower --vector-warmup / --activation-warmup")
    if options.targets not in {t.value for t in QATTargets}:
        raise InputError(f"unknown QAT targets '{options.targets}'", hint="choose teacher or labels")
    if options.targets == QATTargets.TEACHER.value:
        train = teacher_targets(fp32, train)
    elif not (train.has_energy_labels and train.has_force_labels):
        raise InputError("--qat-targets labels needs energy and force labels on every training frame",
                         hint="use --qat-targets teacher (the FP32 parent's predictions)")
    if not (val.has_energy_labels and val.has_force_labels):
        val = teacher_targets(fp32, val)  # unlabelled structures (universal set): validate against FP32
    calibration = calibration_subset(config, calibration)  # calibration, recalibration, bias correction
    model = prepare_qat(fp32, config, calibration, options.tangent_projection, start)
    rng = np.random.default_rng(options.seed)

    def schedule(epoch: int, models: list[nn.Module]) -> None:
        for m in models:
            set_vector_quantization(m, epoch >= options.fully_quantized_from)
            set_activation_quantization(m, epoch >= options.activation_warmup)
            if options.activation_warmup and epoch == options.activation_warmup:
                recalibrate_activations(m, calibration)  # the weights have moved since PTQ

    train_options = TrainOptions(epochs=options.epochs, batch_size=options.batch_size,
                                 learning_rate=options.learning_rate, warmup_steps=20,
                                 energy_weight=options.energy_weight,
                                 final_lr_fraction=0.05, ema_decay=options.ema_decay, seed=options.seed,
                                 offset_free_selection=config.energy_correction)  # offset re-fitted below
    result = train_model(model, train, val, train_options, on_step, qat_loss(options, rng), schedule,
                         select_from_epoch=options.fully_quantized_from)
    convert_qat(result.model)
    set_force_mode(result.model, config.force_mode)  # deployed as configured (trained straight-through)
    if config.energy_correction:
        correct_energy_offset(fp32, result.model, calibration)
    return result
