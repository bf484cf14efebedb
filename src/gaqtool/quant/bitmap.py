"""The bit map of a quantized model: every weighted module's weight bits and every activation
grid's bits (32 = float32), read from a ``QuantPlan``'s entries (or a file's copy of them),
with count-weighted average weight bits and the mean activation bits over grids."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gaqtool.config import FP32_BITS

__all__ = ["BitMap", "bit_map"]


@dataclass
class BitMap:
    """weights: {module path: bits}; weight_counts: {module path: number of weights, 0 where
    unknown}; activations: {grid ``<module>.input_quantizers.<i>``: bits}."""

    weights: dict[str, int] = field(default_factory=dict)
    weight_counts: dict[str, int] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)

    @property
    def average_weight_bits(self) -> float | None:
        """Weight bits averaged over every weight (modules of unknown size left out)."""
        total = sum(self.weight_counts.get(p, 0) for p in self.weights)
        if not total:
            return None
        return sum(bits * self.weight_counts.get(p, 0) for p, bits in self.weights.items()) / total

    @property
    def average_activation_bits(self) -> float | None:
        """Activation bits averaged over the grids (each grid counts once)."""
        return sum(self.activations.values()) / len(self.activations) if self.activations else None

    def histogram(self, which: str) -> dict[int, int]:
        """{bits: number of modules ('weights') or grids ('activations')}, narrowest first."""
        return dict(sorted(Counter(getattr(self, which).values()).items()))

    def to_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "activations": dict(self.activations),
                "average_weight_bits": self.average_weight_bits,
                "average_activation_bits": self.average_activation_bits,
                "weight_histogram": {str(k): v for k, v in self.histogram("weights").items()},
                "activation_histogram": {str(k): v for k, v in self.histogram("activations").items()}}


def bit_map(entries: dict[str, dict[str, Any]]) -> BitMap:
    """The bit map of plan ``entries`` (``QuantPlan.entries`` or a file's plan): quantized
    modules with weights at their ``weight_bits``, modules kept FP32 that have a quantization
    handler (their ``num_weights`` is recorded) at 32, each quantized input at its
    ``input_bits`` (the config's activation bits in files without them)."""
    from gaqtool.quant.apply import HANDLERS, grid_name

    result = BitMap()
    for path, entry in entries.items():
        if entry.get("status") == "fp32":
            if entry.get("kind") in HANDLERS:
                result.weights[path] = FP32_BITS
                result.weight_counts[path] = int(entry.get("num_weights") or 0)
            continue
        if entry.get("weight_bits"):
            result.weights[path] = int(entry["weight_bits"])
            result.weight_counts[path] = int(entry.get("num_weights") or 0)
        for index, bits in enumerate(entry.get("input_bits") or []):
            if bits is not None:
                result.activations[grid_name(path, index)] = int(bits)
    return result
