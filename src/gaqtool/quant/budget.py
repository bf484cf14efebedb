"""Error budgets: what ``--max-error`` means, parsed, and checked against measured metrics.

A budget limits some of energy, forces and stress, each either

- as a ratio to the FP32 parent's error against labels (``forces=1.10``: the quantized force
  MAE at most 1.10x FP32's on the same labelled frames), or
- as an absolute deviation from the FP32 parent with a unit (``forces=5meV/A``,
  ``energy=1meV/atom``, ``stress=0.5meV/A3``), which needs no labels (teacher mode).

Metrics (``gaqtool.metrics.accuracy``): energy MAE in meV over labelled frames (with the mean
per-atom offset removed where the model's energy reference differs from the labels') or the
mean |dE| per atom in meV/atom; force MAE / mean |dF| per component in meV/A; stress MAE / mean
|dS| per component in meV/A^3.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from gaqtool.errors import InputError

__all__ = ["QUANTITIES", "Limit", "ErrorBudget", "parse_budget", "check_budget", "ratio_metric", "unmet",
           "describe_check"]

QUANTITIES = ("energy", "forces", "stress")
RATIO, ABSOLUTE = "ratio", "absolute"
UNITS = {  # quantity -> {unit as typed (lower case): factor to the metric's unit}
    "energy": {"mev/atom": 1.0, "ev/atom": 1000.0},
    "forces": {"mev/a": 1.0, "ev/a": 1000.0, "mev/å": 1.0, "ev/å": 1000.0},
    "stress": {"mev/a3": 1.0, "mev/a^3": 1.0, "ev/a3": 1000.0, "ev/a^3": 1000.0, "gpa": 6.241509},
}
METRIC_UNITS = {"energy": "meV/atom", "forces": "meV/A", "stress": "meV/A3"}
ALIASES = {"energy": "energy", "e": "energy", "forces": "forces", "force": "forces", "f": "forces",
           "stress": "stress", "s": "stress"}
HINT = "e.g. --max-error energy=1.10,forces=1.10 (x FP32's error) or forces=5meV/A,energy=1meV/atom"


@dataclass(frozen=True)
class Limit:
    """One quantity's limit. ``kind``: 'ratio' (``value`` x FP32's MAE against labels) or
    'absolute' (``value`` in ``METRIC_UNITS[quantity]``, deviation from the FP32 parent)."""

    quantity: str
    kind: str
    value: float

    def describe(self) -> str:
        if self.kind == RATIO:
            return f"{self.quantity} <= {self.value:.3g}x FP32"
        return f"|d{self.quantity[0].upper()}| <= {self.value:.3g} {METRIC_UNITS[self.quantity]}"


@dataclass(frozen=True)
class ErrorBudget:
    """The limits of ``--max-error``, one per quantity, in the order given."""

    limits: tuple[Limit, ...]

    @property
    def needs_labels(self) -> bool:
        return any(limit.kind == RATIO for limit in self.limits)

    @property
    def needs_stress(self) -> bool:
        return any(limit.quantity == "stress" for limit in self.limits)

    def describe(self) -> str:
        return ", ".join(limit.describe() for limit in self.limits)

    def to_dict(self) -> list[dict[str, Any]]:
        return [{"quantity": l.quantity, "kind": l.kind, "value": l.value,
                 "unit": "x FP32" if l.kind == RATIO else METRIC_UNITS[l.quantity]} for l in self.limits]


def _parse_limit(term: str) -> Limit:
    name, sep, value = term.partition("=")
    quantity = ALIASES.get(name.strip().lower())
    if not sep or not value.strip():
        raise InputError(f"--max-error: '{term}' is not quantity=value", hint=HINT)
    if quantity is None:
        raise InputError(f"--max-error: unknown quantity '{name.strip()}'",
                         hint="use energy, forces or stress; " + HINT)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(.*?)\s*", value)
    if not match:
        raise InputError(f"--max-error: '{value.strip()}' for {quantity} is not a number", hint=HINT)
    number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number) or number <= 0:
        raise InputError(f"--max-error: the {quantity} limit must be positive, got {number:g}", hint=HINT)
    if unit in ("", "x"):
        return Limit(quantity, RATIO, number)
    factor = UNITS[quantity].get(unit)
    if factor is None:
        raise InputError(f"--max-error: unit '{match.group(2)}' does not fit {quantity}",
                         hint=f"{quantity} takes a ratio (1.10) or "
                              + ", ".join(sorted({u for u in UNITS[quantity] if "å" not in u})))
    return Limit(quantity, ABSOLUTE, number * factor)


def parse_budget(text: str) -> ErrorBudget:
    """``'energy=1.10,forces=5meV/A'`` -> ``ErrorBudget``; one-line ``InputError`` otherwise."""
    terms = [t for t in (text or "").split(",")]
    if not text or not text.strip() or any(not t.strip() for t in terms):
        raise InputError("--max-error is empty or has an empty term", hint=HINT)
    limits = [_parse_limit(t) for t in terms]
    seen = [l.quantity for l in limits]
    for quantity in seen:
        if seen.count(quantity) > 1:
            raise InputError(f"--max-error gives {quantity} twice", hint=HINT)
    return ErrorBudget(tuple(limits))


def ratio_metric(scope: dict[str, Any], quantity: str) -> float | None:
    """The MAE a ratio limit compares (meV, meV/A, meV/A^3) in one model's accuracy dict."""
    from gaqtool.report import reference_mismatch

    if quantity == "energy":
        key = "energy_mae_mev_offset_removed" if reference_mismatch(scope) else "energy_mae_mev"
    else:
        key = "force_mae_mev_a" if quantity == "forces" else "stress_mae_mev_a3"
    return scope.get(key)


DEVIATION_KEYS = {"energy": "energy_mae_mev_per_atom", "forces": "force_mae_mev_a", "stress": "stress_mae_mev_a3"}


def check_budget(budget: ErrorBudget, accuracy: dict[str, Any], deviation: dict[str, Any]) -> dict[str, Any]:
    """Each limit against metrics of one frame set: ``accuracy`` {'fp32', 'quantized'}
    (``accuracy_metrics``) and ``deviation`` (``deviation_metrics`` of quantized vs FP32).

    Returns {'values': {quantity: ratio to FP32, or deviation in ``METRIC_UNITS``}, 'met':
    every limit holds}. Raises ``InputError`` when the frames cannot measure a limit (no
    labels, no stress)."""
    values: dict[str, float] = {}
    for limit in budget.limits:
        if limit.kind == RATIO:
            fp32, quantized = (ratio_metric(accuracy[k], limit.quantity) for k in ("fp32", "quantized"))
            if fp32 is None or quantized is None:
                raise InputError(f"a {limit.quantity} ratio budget needs {limit.quantity} labels on the "
                                 "validation and test frames",
                                 hint="give an absolute budget (e.g. forces=5meV/A), measured against "
                                      "the FP32 parent")
            values[limit.quantity] = quantized / max(fp32, 1e-12)
        else:
            value = deviation.get(DEVIATION_KEYS[limit.quantity])
            if value is None:
                raise InputError("a stress budget needs periodic structures in the validation and test data",
                                 hint="drop stress from --max-error or use data with cells")
            values[limit.quantity] = value
    return {"values": values, "met": all(values[l.quantity] <= l.value for l in budget.limits)}


def unmet(budget: ErrorBudget, check: dict[str, Any]) -> list[str]:
    """Quantities of ``check`` (``check_budget``) over their limit, in the budget's order."""
    return [l.quantity for l in budget.limits if check["values"][l.quantity] > l.value]


def describe_check(limits: list[dict[str, Any]], check: dict[str, Any]) -> str:
    """'forces 1.08x, energy 0.9 meV/atom: met' or '...: missed by 12.0%' from the budget's
    ``to_dict()`` and one ``check_budget`` result (as stored in reports)."""
    parts, worst = [], 0.0
    for limit in limits:
        value = check["values"][limit["quantity"]]
        unit = "x" if limit["kind"] == RATIO else f" {limit['unit']}"
        parts.append(f"{limit['quantity']} {value:.3g}{unit}")
        worst = max(worst, value / limit["value"])
    verdict = "met" if check["met"] else f"missed by {100 * (worst - 1):.1f}%"
    return f"{', '.join(parts)}: {verdict}"
