"""The quantization workflow shared by ``gaqtool quantize``, QAT and the benchmarks:
load -> quantize_model -> GPTQ weight rounding -> calibrate -> evaluate (accuracy, LEE, size) -> save."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any, Callable

import torch

from gaqtool.config import QuantConfig, WeightRounding
from gaqtool.data.frames import Frames
from gaqtool.data.graph import iterate_batches
from gaqtool.device import model_device
from gaqtool.io.loading import LoadedModel, file_sha256
from gaqtool.io.safetensors_io import file_tensors, save_quantized
from gaqtool.metrics.accuracy import accuracy_metrics, deviation_metrics, predict
from gaqtool.metrics.equivariance import local_equivariance_error
from gaqtool.quant.apply import QuantPlan, calibrate, quantize_model
from gaqtool.quant.gptq import gptq_

__all__ = ["calibration_subset", "quantize_loaded", "evaluate_pair", "write_quantized", "FORCE_MODE_NOTE"]

FORCE_MODE_NOTE = {
    "ste": "forces are -dE/dx straight through the activation rounding (the quantized network's own "
           "forces, which this report, eval and lee-check measure), not the gradient of any energy, "
           "so gaqtool md and GAQCalculator use conservative forces unless given --force-mode ste",
    "conservative": "forces are -dE_s/dx of the model with activation rounding off (exactly "
                    "conservative, what gaqtool md and GAQCalculator use by default), while the "
                    "reported energy is the activation-quantized one",
}


def calibration_subset(config: QuantConfig, frames: Frames) -> Frames:
    """The first ``config.calib_frames`` of ``frames``: what calibration and the energy bias
    correction see."""
    return frames.subset(range(min(config.calib_frames, len(frames))))


def quantize_loaded(fp32: torch.nn.Module, config: QuantConfig, calibration: Frames,
                    on_progress: Callable[[int], None] | None = None) -> tuple[torch.nn.Module, QuantPlan]:
    """A quantized, calibrated deep copy of ``fp32`` (the original is left untouched)."""
    torch.manual_seed(config.seed)
    model, plan = quantize_model(copy.deepcopy(fp32).eval(), config)
    model.to(model_device(fp32))  # the new quantized buffers were made on the CPU
    frames = calibration_subset(config, calibration)
    if config.weight_rounding == WeightRounding.GPTQ:
        rounded = set(gptq_(model, fp32, frames))
        for path, entry in plan.entries.items():  # the config says gptq: record the exceptions only
            if entry.get("weight_bits") and path not in rounded:
                entry["rounding"] = WeightRounding.NEAREST.value
    calibrate(model, iterate_batches(frames, 8, model.cutoff), lambda m, b: m(b),
              (lambda b: on_progress(b.num_molecules)) if on_progress else None)
    if config.energy_correction and hasattr(model, "add_energy_offset"):
        correct_energy_offset(fp32, model, frames)
    return model, plan


@torch.no_grad()
def correct_energy_offset(fp32: torch.nn.Module, quantized: torch.nn.Module, frames: Frames) -> float:
    """Add the mean (FP32 - quantized) energy per atom on ``frames`` to every atomic energy of
    ``quantized`` (``add_energy_offset``: its config too, so the file rebuilds it). Returns the
    offset in eV/atom."""
    differences = []
    for batch in iterate_batches(frames, 8, quantized.cutoff):
        natoms = batch.num_atoms_per_molecule.to(torch.float64)
        differences.append((fp32(batch) - quantized(batch)) / natoms)
    offset = float(torch.cat(differences).mean())
    quantized.add_energy_offset(offset)
    return offset


def evaluate_pair(fp32: torch.nn.Module, quantized: torch.nn.Module, frames: Frames,
                  lee_frames: int, lee_rotations: int, seed: int,
                  on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Accuracy (against the labels, where the frames have them), the quantized model's
    deviation from its FP32 parent on every frame, and LEE of both, on the same frames."""
    out: dict[str, Any] = {"accuracy": {}, "lee": {}}
    lee_set = frames.subset(range(min(lee_frames, len(frames))))
    predictions = {}
    for name, model in (("fp32", fp32), ("quantized", quantized)):
        predictions[name] = predict(model, frames, on_batch=on_progress)
        out["accuracy"][name] = accuracy_metrics(predictions[name], frames)
        out["lee"][name] = local_equivariance_error(model, lee_set, lee_rotations, seed)
        if on_progress:
            on_progress(0)
    out["deviation"] = deviation_metrics(predictions["quantized"], predictions["fp32"], frames)
    return out


def size_summary(loaded: LoadedModel, quantized: torch.nn.Module) -> dict[str, Any]:
    """Bytes of the FP32 checkpoint and of the quantized tensors, with their ratio."""
    fp32_bytes = loaded.path.stat().st_size
    fp32_params = sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values())
    tensor_bytes = sum(t.numel() * t.element_size() for t in file_tensors(quantized).values())
    return {"fp32_checkpoint_bytes": fp32_bytes, "fp32_tensor_bytes": fp32_params,
            "quantized_tensor_bytes": tensor_bytes,
            "tensor_ratio": fp32_params / max(1, tensor_bytes)}


def write_quantized(output: Path, loaded: LoadedModel, quantized: torch.nn.Module, plan: QuantPlan,
                    config: QuantConfig, report: dict[str, Any]) -> dict[str, Any]:
    """Save atomically; return the report completed with file sizes."""
    started = time.perf_counter()
    save_quantized(output, quantized, config, plan, file_sha256(loaded.path), report)
    report = dict(report)
    size = dict(report.get("size", {}))
    size["quantized_file_bytes"] = output.stat().st_size
    size["file_ratio"] = size["fp32_checkpoint_bytes"] / max(1, size["quantized_file_bytes"])
    report["size"] = size
    report["output"] = str(output)
    report.setdefault("seconds", {})["write"] = time.perf_counter() - started
    return report
