"""The compact quantized-model file: safetensors with bit-packed integer weights.

Tensor names (see docs/FORMAT.md):
  ``<module>.<param>_packed``  uint8, integers packed (int8 one, int4 two, int2 four per byte)
  ``<module>.<param>_scale``   float32, flat scales (per view: groups x out channels)
  ``<module>.<param>_shape``   int32 (int64 before 0.1.3), the parameter's original shape
  every other tensor of the model's state dict (biases, FP32 modules, activation scales)
  under its state-dict name, unchanged.
Metadata (str -> str): ``gaqtool.format_version``, ``gaqtool.model_config``,
``gaqtool.quant_config``, ``gaqtool.plan``, ``gaqtool.report`` (JSON), ``gaqtool.source_sha256``,
``gaqtool.tensors_sha256`` (integrity of all tensor bytes). The JSON header is written with
sorted keys, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from gaqtool import __version__
from gaqtool.config import FP32_BITS, QuantConfig
from gaqtool.errors import FormatError, GaqtoolError
from gaqtool.io.atomic import atomic_write
from gaqtool.packing import pack_bits, unpack_bits
from gaqtool.quant.apply import QuantPlan, activation_quantizers, quantize_model
from gaqtool.quant.modules import QuantizedModule

__all__ = ["FORMAT_VERSION", "save_quantized", "load_quantized", "read_header", "QuantizedFile"]

# Format changelog:
#   1 (gaqtool 0.1): packed weights + scales + shapes, activation scales as plain tensors.
#     Header additions inside version 1 are listed in docs/FORMAT.md by gaqtool version (0.3.0:
#     per-module / per-grid bit overrides in the quant config, input_bits in the plan; 0.3.1:
#     the calibration structures' elements in the report).
FORMAT_VERSION = "1"
# buffers rebuilt from the model config, not stored: e3nn output masks, and the constants of
# e3nn's generated (torch.fx) tensor-product code, which a deep copy turns into state-dict entries
DERIVED_PATTERN = re.compile(r"(\.output_mask|\._tensor_constant\d+)$")


def is_derived(key: str) -> bool:
    """True for state-dict entries the model rebuilds from its config (never stored)."""
    return DERIVED_PATTERN.search(key) is not None
# float32 buffers stored as float16 (their values are float16-exact by construction)
HALF_SUFFIXES = ("weight_scale", ".scalar_scale", ".norm_scale", ".tensor_scale")
_META_KEYS = ("gaqtool.format_version", "gaqtool.model_config", "gaqtool.quant_config", "gaqtool.plan")


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        digest.update(name.encode() + str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _compact_json(value: Any) -> str:
    """Sorted, separator-free JSON (the header stores it escaped, so every byte counts twice)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=float)


def _canonical(data: bytes) -> bytes:
    """Rewrite the safetensors JSON header with sorted keys (safetensors orders metadata randomly)."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length:]


def file_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors written for ``model``: packed weights for quantized modules, the rest as is."""
    state = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    skip: set[str] = set()
    for path, module in model.named_modules():
        if not isinstance(module, QuantizedModule):
            continue
        for name in module.weight_names:
            values = getattr(module, f"{name}_int").cpu()
            tensors[f"{path}.{name}_packed"] = pack_bits(values, module.weight_bits)
            tensors[f"{path}.{name}_shape"] = torch.tensor(list(values.shape), dtype=torch.int32)
            skip |= {f"{path}.inner.{name}", f"{path}.{name}_int"}
    for key, value in state.items():
        if key in skip or is_derived(key) or value.numel() == 0:
            continue
        tensors[key] = _storage_dtype(key, value.detach().cpu()).contiguous().clone()
    return tensors


def _storage_dtype(key: str, value: torch.Tensor) -> torch.Tensor:
    """Scales go to float16 (they are rounded to float16 when chosen, so this is exact);
    8-bit activation zero points to uint8. Everything else keeps its dtype."""
    if key.endswith(HALF_SUFFIXES):
        return value.half()
    if key.endswith("_zero_point") and value.numel() and 0 <= int(value.min()) and int(value.max()) <= 255:
        return value.to(torch.uint8)
    return value


# Report parts the file holds elsewhere (plan, quant_config) or that follow from the config
# (the force-mode note): the full report is printed and written by --report.
# wall times ('seconds') are left out so that the same inputs and seed give the same bytes
_REPORT_KEYS_NOT_STORED = ("modules", "unquantized_parameters", "config", "force_mode", "seconds")


def _rounded(value: Any, digits: int = 6) -> Any:
    """``value`` with every float rounded to ``digits`` significant digits (the stored report is
    a record of measurements, not an input to any computation)."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def _report_for_file(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what the file holds elsewhere or what only the --report JSON needs
    (the per-epoch QAT history, the bit map's per-module lists, which the plan holds, and the
    per-module sensitivities of an error budget). The source checkpoint is named by its file name only: its
    directory says nothing about the model (``gaqtool.source_sha256`` identifies it), and
    would make the bytes depend on where the user keeps it."""
    stored = {k: v for k, v in report.items() if k not in _REPORT_KEYS_NOT_STORED}
    if isinstance(stored.get("source"), dict) and "path" in stored["source"]:
        stored["source"] = {**stored["source"], "path": Path(stored["source"]["path"]).name}
    if isinstance(stored.get("qat"), dict):
        stored["qat"] = {k: v for k, v in stored["qat"].items() if k not in ("history", "seconds")}
    if isinstance(stored.get("bit_map"), dict):  # the plan holds every module's and grid's bits
        stored["bit_map"] = {k: v for k, v in stored["bit_map"].items() if k not in ("weights", "activations")}
    if isinstance(stored.get("budget"), dict):  # per-module sensitivities only in --report
        budget = stored["budget"] = dict(stored["budget"])
        budget["sensitivity"] = {k: v for k, v in budget.get("sensitivity", {}).items() if k != "targets"}
        budget["promotions"] = [{k: v for k, v in p.items() if k != "kind" and v is not None}
                                for p in budget.get("promotions", [])]
    return stored


def plan_for_file(entries: dict[str, dict[str, Any]], weight_bits: int,
                  activation_bits: int | None = None) -> dict[str, dict[str, Any]]:
    """Module entries without what the file already says: empty reasons, ``num_weights`` of
    packed weights (the product of the module's ``*_shape`` tensors; kept for FP32 weights),
    ``weight_bits`` where it is the config's ``weight_bits`` and ``input_bits`` where every
    grid has the config's ``activation_bits`` (readers fill them back in). The per-parameter
    FP32 list stays in the printed / --report report."""
    def stored(entry: dict[str, Any], key: str, value: Any) -> bool:
        packed = entry.get("status") == "quantized" and entry.get("weight_bits") not in (None, FP32_BITS)
        default_grids = key == "input_bits" and all(
            b == activation_bits for b, i in zip(value, entry.get("inputs") or []) if i is not None)
        return not ((key == "num_weights" and (packed or not value)) or (key == "reason" and not value)
                    or (key == "weight_bits" and value == weight_bits) or default_grids)

    return {path: {k: v for k, v in entry.items() if stored(entry, k, v)} for path, entry in entries.items()}


def save_quantized(path: Path | str, model: torch.nn.Module, config: QuantConfig, plan: QuantPlan,
                   source_sha256: str, report: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (after ``quantize_model`` + ``calibrate``) atomically to ``path``."""
    tensors = file_tensors(model)
    metadata = {
        "gaqtool.format_version": FORMAT_VERSION,
        "gaqtool.writer": f"gaqtool {__version__}",
        "gaqtool.model_config": _compact_json(model.config),
        "gaqtool.quant_config": _compact_json(config.to_dict()),
        "gaqtool.plan": _compact_json({"entries": plan_for_file(plan.entries, config.weight_bits,
                                                                config.activation_bits)}),
        "gaqtool.report": _compact_json(_rounded(_report_for_file(report or {}))),
        "gaqtool.source_sha256": source_sha256,
        "gaqtool.tensors_sha256": _tensors_digest(tensors),
    }
    data = _canonical(save(tensors, metadata=metadata))
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


class QuantizedFile:
    """An opened quantized file: metadata (parsed) and tensors, validated."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if self.path.is_dir():
            raise FormatError(f"{self.path} is a directory, not a quantized file",
                              hint="name the .safetensors file written by `gaqtool quantize`")
        if not self.path.is_file():
            raise FormatError(f"file not found: {self.path}", hint="check the path")
        with open(self.path, "rb") as handle:
            head = handle.read(8)
        too_long = len(head) < 8 or struct.unpack("<Q", head)[0] > self.path.stat().st_size
        if too_long and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # zip or pickle
            raise FormatError(f"{self.path} is a PyTorch checkpoint, not a quantized .safetensors file",
                              hint="inspect reads files written by `gaqtool quantize`; eval, lee-check and "
                                   "md read checkpoints too")
        try:
            with safe_open(str(self.path), framework="pt") as handle:
                self.raw_metadata = handle.metadata() or {}
                self.tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise FormatError(f"{self.path} is not a readable safetensors file "
                              f"(truncated or corrupted?): {str(exc).splitlines()[0][:200]}",
                              hint="re-create it with `gaqtool quantize`") from None
        version = self.raw_metadata.get("gaqtool.format_version")
        if version is None:
            raise FormatError(f"{self.path} is a safetensors file but not a gaqtool model "
                              "(no gaqtool.format_version)")
        if version != FORMAT_VERSION:
            raise FormatError(f"{self.path} has gaqtool format version {version}; this gaqtool "
                              f"reads version {FORMAT_VERSION}", hint="upgrade gaqtool or re-quantize")
        missing = [k for k in _META_KEYS if k not in self.raw_metadata]
        if missing:
            raise FormatError(f"{self.path} lacks metadata {', '.join(missing)}")
        expected = self.raw_metadata.get("gaqtool.tensors_sha256")
        if expected and _tensors_digest(self.tensors) != expected:
            raise FormatError(f"{self.path} is corrupted: its tensors do not match their checksum",
                              hint="re-create or re-download the file")
        try:
            self.model_config = json.loads(self.raw_metadata["gaqtool.model_config"])
            self.quant_config_dict = json.loads(self.raw_metadata["gaqtool.quant_config"])
            self.plan = json.loads(self.raw_metadata["gaqtool.plan"])
            for entry in self.plan.get("entries", {}).values():  # left out where it is the config's
                if entry.get("status") == "quantized" and "weight_bits" not in entry:
                    entry["weight_bits"] = self.quant_config_dict.get("weight_bits")
                if entry.get("status") == "quantized" and "input_bits" not in entry:
                    bits = self.quant_config_dict.get("activation_bits")
                    entry["input_bits"] = [bits if irreps is not None else None
                                           for irreps in entry.get("inputs") or []]
            self.report = json.loads(self.raw_metadata.get("gaqtool.report", "{}"))
        except json.JSONDecodeError as exc:
            raise FormatError(f"{self.path}: metadata is not valid JSON ({exc})") from None

    @property
    def quant_config(self) -> QuantConfig:
        try:
            return QuantConfig.from_dict(self.quant_config_dict)
        except GaqtoolError as exc:
            raise FormatError(f"{self.path}: {exc.message}") from None


def read_header(path: Path | str) -> QuantizedFile:
    """Open and validate a quantized file without building the model."""
    return QuantizedFile(path)


def load_quantized(path: Path | str, e3nn_convolution: bool = False) -> torch.nn.Module:
    """Rebuild a runnable quantized model from ``path`` (no pickle involved). Eval mode.
    ``e3nn_convolution``: keep e3nn's tensor products instead of the backend's fused kernels."""
    qfile = QuantizedFile(path)
    config = qfile.quant_config
    from gaqtool.backends import backend_for_config

    try:
        model = backend_for_config(qfile.model_config).build(qfile.model_config, e3nn_convolution)
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"{qfile.path}: cannot rebuild the model from its config: {exc}") from None
    model, _ = quantize_model(model, config)
    tensors = dict(qfile.tensors)
    handled: set[str] = set()
    try:
        for path_, module in model.named_modules():
            if not isinstance(module, QuantizedModule):
                continue
            for name in module.weight_names:
                shape = tuple(tensors.pop(f"{path_}.{name}_shape").tolist())
                packed = tensors.pop(f"{path_}.{name}_packed")
                scales = tensors.pop(f"{path_}.{name}_scale")
                values = unpack_bits(packed, module.weight_bits, shape)
                module.load_quantized_weight(name, values, scales)
                handled |= {f"{path_}.inner.{name}", f"{path_}.{name}_int", f"{path_}.{name}_scale"}
    except KeyError as exc:
        raise FormatError(f"{qfile.path} lacks tensor {exc}") from None
    except RuntimeError as exc:
        raise FormatError(f"{qfile.path}: tensor shapes do not fit the model: {exc}") from None
    result = model.load_state_dict(tensors, strict=False)
    missing = {k for k in set(result.missing_keys) - handled
               if not is_derived(k) and model.state_dict()[k].numel() > 0}
    if missing or result.unexpected_keys:
        raise FormatError(f"{qfile.path} does not match its model config "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(result.unexpected_keys)[:3]})")
    for quantizer in activation_quantizers(model):
        quantizer.mode = "quantize"
    model.eval()
    model.quant_config = config
    model.file_metadata = qfile
    return model
