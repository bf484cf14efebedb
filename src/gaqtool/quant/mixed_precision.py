"""Accuracy-driven mixed precision: the fewest extra bits that meet an error budget.

1. **Ladder.** The model is quantized at the configured bits (the start) and once more with
   every weighted module at each wider weight level (GPTQ as configured); 16-bit grids are
   recalibrated on a copy of the start. Weights climb w2 -> w4 -> w8 -> FP32 from their start
   bits, activation grids a8 -> a16 -> FP32.
2. **Sensitivity, measured.** With every other module and grid in FP32, each weighted module
   at each of its non-FP32 levels and each grid at each of its levels is run on the
   calibration frames (one pass per candidate): the mean squared deviation from the FP32 parent
   it adds, per quantity (energy per atom with the calibration mean removed, as the energy
   bias correction does; force and stress components).
3. **Promotion.** Greedy: the next level of the module or grid that removes the most estimated
   error per extra byte, the error counted only for quantities still over budget, each in
   units of its limit. Estimated errors add over modules (independent rounding noise). Extra
   bytes: file bytes for weights; for a grid, the bytes of that activation tensor on a mean
   calibration structure (memory moved per inference), so that widening a grid is not free.
   Whenever the estimate, scaled to the last measurement, says the budget holds, the assembled
   model is measured on the validation frames (disjoint from calibration and test); the search
   stops when the measurement holds.
4. **Build.** The chosen map becomes per-module / per-grid overrides of the ``QuantConfig``, and
   the model is quantized from the FP32 parent through the ordinary path
   (``workflow.quantize_loaded``), so a file's config rebuilds it; it is measured on the
   validation frames once more (promotion resumes if it misses).

A budget that the W8A16 map (every weight at 8 bits or wider, every grid at 16 or wider)
does not meet on the validation frames raises ``BudgetError`` unless ``best_effort``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from gaqtool.config import ACTIVATION_LEVELS, FP32_BITS, WEIGHT_LEVELS, QuantConfig
from gaqtool.data.frames import Frames
from gaqtool.data.graph import iterate_batches
from gaqtool.errors import BudgetError
from gaqtool.metrics.accuracy import Predictions, accuracy_metrics, deviation_metrics, predict
from gaqtool.quant.apply import QuantPlan, activation_quantizers, calibrate
from gaqtool.quant.assembly import MapAssembly
from gaqtool.quant.budget import RATIO, ErrorBudget, check_budget, describe_check, ratio_metric, unmet
from gaqtool.workflow import calibration_subset, correct_energy_offset, quantize_loaded

__all__ = ["search_bit_map", "SearchResult", "Promotion", "CEILING_WEIGHT_BITS", "CEILING_ACTIVATION_BITS"]

CEILING_WEIGHT_BITS = 8        # the W8A16 map that decides whether a budget is possible
CEILING_ACTIVATION_BITS = 16
CHECK_EVERY = 8                # promotions after which the validation frames are measured anyway
MAX_BUILDS = 3                 # rebuilds of the chosen map before giving up on the estimate

Progress = Callable[[str, int], Callable[[int], None]]
"""``progress(description, total)`` -> ``advance(n)``: how the search reports its stages."""


def _no_progress(_description: str, _total: int) -> Callable[[int], None]:
    return lambda _n=1: None


@dataclass
class Target:
    """One thing the search can widen: a weighted module or an activation grid.

    kind: 'weights' or 'activations'; levels: its bits, narrowest (the start) first;
    bytes: extra-byte cost of each level (file bytes of the weights, or activation bytes of a
    mean calibration structure); error: per level, {quantity: mean squared deviation}."""

    name: str
    kind: str
    levels: list[int]
    bytes: dict[int, float] = field(default_factory=dict)
    error: dict[int, dict[str, float]] = field(default_factory=dict)


@dataclass
class Promotion:
    """One widening: ``target`` from ``from_bits`` to ``to_bits`` for ``extra_bytes``.
    ``error_share``: per quantity over budget, the share of the start's estimated error this
    promotion removes (its measured sensitivity); ``validation``: the budget check measured
    right after it, where one was made."""

    target: str
    kind: str
    from_bits: int
    to_bits: int
    extra_bytes: float
    error_share: dict[str, float]
    validation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "kind": self.kind, "from_bits": self.from_bits,
                "to_bits": self.to_bits, "extra_bytes": self.extra_bytes,
                "error_share": self.error_share, "validation": self.validation}


@dataclass
class SearchResult:
    """The chosen model (quantized from the FP32 parent with ``config``'s overrides, energy
    corrected as configured), its plan, and how it was chosen."""

    model: nn.Module
    plan: QuantPlan
    config: QuantConfig
    met: bool
    promotions: list[Promotion]
    checks: dict[str, Any]
    sensitivity: dict[str, Any]
    seconds: float

    def to_report(self, budget: ErrorBudget) -> dict[str, Any]:
        return {"max_error": budget.to_dict(), "describe": budget.describe(), "met": self.met,
                "promotions": [p.to_dict() for p in self.promotions], "validation": self.checks,
                "sensitivity": self.sensitivity, "seconds": self.seconds}


def _squared_deviation(pred: Predictions, reference: Predictions, frames: Frames,
                       stress: bool) -> dict[str, float]:
    """Mean squared deviation from ``reference``: energy per atom (meV/atom)^2 with its mean
    removed, force components (meV/A)^2, stress components of periodic frames (meV/A^3)^2."""
    natoms = frames.num_atoms.astype(float)
    de = (pred.energies - reference.energies) * 1000.0 / natoms
    df = np.concatenate([(a - b).reshape(-1) for a, b in zip(pred.forces, reference.forces)]) * 1000.0
    out = {"energy": float(((de - de.mean()) ** 2).mean()), "forces": float((df ** 2).mean())}
    if stress and pred.stresses is not None:
        rows = [(a - b).reshape(-1) for a, b in zip(pred.stresses, reference.stresses) if np.all(np.isfinite(a))]
        out["stress"] = float(((np.concatenate(rows) * 1000.0) ** 2).mean()) if rows else 0.0
    return out


def _weight_bytes(num_weights: int, num_scales: int, bits: int) -> float:
    """File bytes of a module's weights at ``bits`` (packed integers + float16 scales, or float32)."""
    return 4.0 * num_weights if bits == FP32_BITS else -(-num_weights * bits // 8) + 2.0 * num_scales


class _Search:
    """State of one search (see the module docstring); ``run`` returns a ``SearchResult``."""

    def __init__(self, fp32: nn.Module, config: QuantConfig, calibration: Frames, validation: Frames,
                 budget: ErrorBudget, best_effort: bool, progress: Progress,
                 sensitivity_frames: int | None = None):
        self.fp32, self.config, self.budget = fp32.eval(), config, budget
        self.calibration = calibration
        self.calib = calibration_subset(config, calibration)
        count = min(sensitivity_frames or len(self.calib), len(self.calib))
        self.sensitivity_set = self.calib.subset(  # evenly spread over the calibration frames
            sorted({int(k) for k in np.linspace(0, len(self.calib) - 1, count).round()}))
        self.validation, self.best_effort, self.progress = validation, best_effort, progress
        self.stress = budget.needs_stress
        self.checks: dict[str, Any] = {}
        self.validation_passes = 0

    # --- ladder and sensitivity --------------------------------------------------------------
    def _ladder(self) -> None:
        quiet = self.config.replace(energy_correction=False)
        advance = self.progress("quantizing the ladder", 1)
        self.start, self.start_plan = quantize_loaded(self.fp32, quiet, self.calibration)
        advance(1)
        self.assembly = MapAssembly(self.start, self.fp32)
        self.assembly.add_weight_donor(self.start)
        start_bits = {p: self.start.get_submodule(p).weight_bits for p in self.assembly.weights}
        wider = [b for b in WEIGHT_LEVELS if b != FP32_BITS and b > min(start_bits.values(), default=8)]
        grids = {p: self.start.get_submodule(p).num_bits for p in self.assembly.grids}
        act_wider = [a for a in ACTIVATION_LEVELS if a != FP32_BITS and a > min(grids.values(), default=16)]
        advance = self.progress("quantizing the ladder", len(wider) + len(act_wider))
        for bits in wider:
            overrides = {p: max(bits, b) for p, b in start_bits.items()}
            donor, _ = quantize_loaded(self.fp32, quiet.replace(weight_bits_overrides=overrides), self.calibration)
            self.assembly.add_weight_donor(donor)
            advance(1)
        self.assembly.add_grid_donor(self.start)
        for bits in act_wider:  # recalibrated in place at the wider bits, then put back
            for quantizer in activation_quantizers(self.start):
                quantizer.num_bits = max(bits, quantizer.num_bits)
            calibrate(self.start, iterate_batches(self.calib, 8, self.start.cutoff), lambda m, b: m(b))
            self.assembly.add_grid_donor(self.start)
            advance(1)
        for name, bits in grids.items():
            self.assembly.set(name, bits)
        self.targets = [Target(p, "weights", [b for b in WEIGHT_LEVELS if b >= start_bits[p]])
                        for p in self.assembly.weights]
        self.targets += [Target(g, "activations", [a for a in ACTIVATION_LEVELS if a >= grids[g]])
                         for g in self.assembly.grids]

    def _measure_sensitivity(self) -> None:
        started = time.perf_counter()
        for target in self.targets:
            self.assembly.set(target.name, FP32_BITS)
        elements = self._grid_elements()
        self.reference_calib = predict(self.fp32, self.sensitivity_set, stress=self.stress)
        passes = [(t, b) for t in self.targets for b in t.levels if b != FP32_BITS]
        advance = self.progress("sensitivity", len(passes))
        for target, bits in passes:
            self.assembly.set(target.name, bits)
            pred = predict(self.assembly.model, self.sensitivity_set, stress=self.stress)
            target.error[bits] = _squared_deviation(pred, self.reference_calib, self.sensitivity_set,
                                                    self.stress)
            self.assembly.set(target.name, FP32_BITS)
            advance(1)
        zero = {q: 0.0 for q in self.quantities}
        for target in self.targets:
            target.error[FP32_BITS] = dict(zero)
            for bits in target.levels:
                if target.kind == "weights":
                    module = self.start.get_submodule(target.name)
                    count = sum(getattr(module, f"{n}_int").numel() for n in module.weight_names)
                    scales = sum(getattr(module, f"{n}_scale").numel() for n in module.weight_names)
                    target.bytes[bits] = _weight_bytes(count, scales, bits)
                else:
                    target.bytes[bits] = elements[target.name] * bits / 8.0
        self.sensitivity = {"frames": len(self.sensitivity_set), "passes": len(passes),
                            "seconds": time.perf_counter() - started,
                            "targets": {t.name: {"kind": t.kind, "mean_squared_deviation":
                                                 {str(b): t.error[b] for b in t.levels if b != FP32_BITS}}
                                        for t in self.targets}}

    def _check_additivity(self) -> None:
        """The start model's measured mean squared deviation on the calibration frames next to
        the sum of its modules' and grids' isolated ones (the estimate the promotion uses)."""
        pred = predict(self.assembly.model, self.sensitivity_set, stress=self.stress)
        self.sensitivity["start_measured"] = _squared_deviation(pred, self.reference_calib,
                                                                self.sensitivity_set, self.stress)
        self.sensitivity["start_estimated"] = self._estimate(self.start_state)

    @torch.no_grad()
    def _grid_elements(self) -> dict[str, float]:
        """Activation elements per mean calibration structure at each grid (one FP32 pass)."""
        counts = {name: 0 for name in self.assembly.grids}
        handles = [self.assembly.model.get_submodule(name).register_forward_pre_hook(
            lambda _m, args, name=name: counts.__setitem__(name, counts[name] + args[0].numel()))
            for name in counts]
        try:
            for batch in iterate_batches(self.calib, 8, self.assembly.model.cutoff):
                self.assembly.model(batch)
        finally:
            for handle in handles:
                handle.remove()
        return {name: count / max(1, len(self.calib)) for name, count in counts.items()}

    @property
    def quantities(self) -> list[str]:
        return ["energy", "forces"] + (["stress"] if self.stress else [])

    # --- validation ----------------------------------------------------------------------------
    def _validate(self, model: nn.Module, corrected: bool) -> dict[str, Any]:
        """Budget check of ``model`` on the validation frames; ``corrected``: its energy offset
        is already fitted, else the bias correction's offset is applied to its predictions."""
        self.validation_passes += 1
        pred = predict(model, self.validation, stress=self.stress)
        if self.config.energy_correction and not corrected:
            with torch.no_grad():
                offsets = [((self.fp32(b) - model(b)) / b.num_atoms_per_molecule.double())
                           for b in iterate_batches(self.calib, 8, model.cutoff)]
            offset = float(torch.cat(offsets).mean())
            pred = Predictions(pred.energies + offset * self.validation.num_atoms, pred.forces, pred.stresses)
        accuracy = {"fp32": self.fp32_val_accuracy, "quantized": accuracy_metrics(pred, self.validation)}
        return check_budget(self.budget, accuracy, deviation_metrics(pred, self.reference_val, self.validation))

    def _scales(self) -> dict[str, float]:
        """Per quantity, the limit as a root-mean-square deviation (meV/atom, meV/A, meV/A^3):
        an absolute limit itself; a ratio r of FP32's MAE m: m sqrt(r^2 - 1) (per atom for
        energy), the error that may be added if independent errors add in quadrature."""
        natoms = float(np.mean(self.validation.num_atoms))
        scales = {}
        for limit in self.budget.limits:
            if limit.kind == RATIO:
                base = ratio_metric(self.fp32_val_accuracy, limit.quantity) or 0.0
                base /= natoms if limit.quantity == "energy" else 1.0
                scales[limit.quantity] = max(base, 1e-9) * max(limit.value ** 2 - 1.0, 1e-6) ** 0.5
            else:
                scales[limit.quantity] = limit.value
        return scales

    # --- promotion -----------------------------------------------------------------------------
    def _estimate(self, state: dict[str, int]) -> dict[str, float]:
        return {q: sum(t.error[state[t.name]].get(q, 0.0) for t in self.targets) for q in self.quantities}

    def _predict(self, last: dict[str, Any], est_last: dict[str, float], est_now: dict[str, float]) -> bool:
        """Whether the budget should now hold: the last measurement, scaled by the estimate."""
        for limit in self.budget.limits:
            q = limit.quantity
            factor = est_now[q] / est_last[q] if est_last[q] > 0 else 1.0
            value = last["values"][q]
            if limit.kind == RATIO:  # MAE^2 = MAE_fp32^2 + (added error)^2
                value = (1.0 + max(value ** 2 - 1.0, 0.0) * factor) ** 0.5
            else:
                value *= factor ** 0.5
            if value > limit.value:
                return False
        return True

    def _best_candidate(self, state: dict[str, int], over: list[str]) -> Target | None:
        best, best_score = None, 0.0
        for target in self.targets:
            index = target.levels.index(state[target.name])
            if index + 1 >= len(target.levels):
                continue
            now, nxt = target.levels[index], target.levels[index + 1]
            gain = sum(max(target.error[now][q] - target.error[nxt][q], 0.0) / self.scale[q] ** 2
                       for q in over)
            score = gain / max(target.bytes[nxt] - target.bytes[now], 1e-9)
            if score > best_score:
                best, best_score = target, score
        return best

    def _promote(self, state: dict[str, int], last: dict[str, Any], promotions: list[Promotion]
                 ) -> tuple[dict[str, Any], bool]:
        """Promote from ``state`` (in place) until the assembled model meets the budget on the
        validation frames; returns (last check, met)."""
        est_last = self._estimate(state)
        est_start = self._estimate(self.start_state)
        since_check = 0
        total = sum(len(t.levels) - 1 - t.levels.index(state[t.name]) for t in self.targets)
        advance = self.progress("promoting", total)
        while not last["met"]:
            over = unmet(self.budget, last)
            target = self._best_candidate(state, over)
            if target is None:
                return last, False
            now = state[target.name]
            nxt = target.levels[target.levels.index(now) + 1]
            state[target.name] = nxt
            self.assembly.set(target.name, nxt)
            share = {q: (target.error[now][q] - target.error[nxt][q]) / est_start[q] if est_start[q] else 0.0
                     for q in over}
            promotions.append(Promotion(target.name, target.kind, now, nxt,
                                        target.bytes[nxt] - target.bytes[now], share))
            advance(1)
            since_check += 1
            est_now = self._estimate(state)
            if self._predict(last, est_last, est_now) or since_check >= CHECK_EVERY:
                last = self._validate(self.assembly.model, corrected=False)
                promotions[-1].validation = last
                est_last, since_check = est_now, 0
        return last, True

    def _overrides(self, state: dict[str, int]) -> QuantConfig:
        weights = {t.name: state[t.name] for t in self.targets
                   if t.kind == "weights" and state[t.name] != self.start_state[t.name]}
        grids = {t.name: state[t.name] for t in self.targets
                 if t.kind == "activations" and state[t.name] != self.start_state[t.name]}
        return self.config.replace(weight_bits_overrides=weights, activation_bits_overrides=grids)

    def _apply(self, state: dict[str, int]) -> None:
        for target in self.targets:
            self.assembly.set(target.name, state[target.name])

    def run(self) -> SearchResult:
        started = time.perf_counter()
        self._ladder()
        self._measure_sensitivity()
        self.reference_val = predict(self.fp32, self.validation, stress=self.stress)
        self.fp32_val_accuracy = accuracy_metrics(self.reference_val, self.validation)
        self.start_state = {t.name: t.levels[0] for t in self.targets}
        state = dict(self.start_state)
        self._apply(state)
        self._check_additivity()
        self.checks["start"] = last = self._validate(self.assembly.model, corrected=False)
        self.scale = self._scales()
        promotions: list[Promotion] = []
        if not last["met"]:
            ceiling = {t.name: max(t.levels[0], CEILING_WEIGHT_BITS if t.kind == "weights"
                                   else CEILING_ACTIVATION_BITS) for t in self.targets}
            self._apply(ceiling)
            self.checks["ceiling_w8a16"] = self._validate(self.assembly.model, corrected=False)
            self._apply(state)
            if not self.checks["ceiling_w8a16"]["met"]:
                if not self.best_effort:
                    raise BudgetError(_impossible_message(self.budget, self.checks["ceiling_w8a16"], len(self.validation)),
                                      hint="loosen --max-error, or add --best-effort to write the "
                                           "W8A16 model anyway")
                state = ceiling
            else:
                for _ in range(MAX_BUILDS):
                    last, met = self._promote(state, last, promotions)
                    if not met or self._build(state)[2]["met"]:
                        break
                    last = self._build(state)[2]  # the rebuilt model misses: promote further
        model, plan, check = self._build(state)
        self.checks["chosen"] = check
        self.sensitivity["validation_passes"] = self.validation_passes
        return SearchResult(model, plan, self._overrides(state), bool(check["met"]), promotions,
                            self.checks, self.sensitivity, time.perf_counter() - started)

    def _build(self, state: dict[str, int]) -> tuple[nn.Module, QuantPlan, dict[str, Any]]:
        """The model of ``state`` quantized from the FP32 parent (the start model itself, energy
        corrected, when nothing was promoted), its plan and its budget check on the validation
        frames; cached for the last state."""
        key = tuple(sorted(state.items()))
        if getattr(self, "_built_key", None) == key:
            return self._built
        config = self._overrides(state)
        if not config.weight_bits_overrides and not config.activation_bits_overrides:
            self._apply(self.start_state)  # the assembly is the start model again
            model, plan = self.start, self.start_plan
            if config.energy_correction and hasattr(model, "add_energy_offset"):
                correct_energy_offset(self.fp32, model, self.calib)
        else:
            advance = self.progress("quantizing the chosen map", 1)
            model, plan = quantize_loaded(self.fp32, config, self.calibration)
            advance(1)
        self._built_key, self._built = key, (model, plan, self._validate(model, corrected=True))
        return self._built


def _impossible_message(budget: ErrorBudget, check: dict[str, Any], frames: int) -> str:
    return (f"the error budget ({budget.describe()}) is not met even at W8A16: "
            f"{describe_check(budget.to_dict(), check)} on {frames} validation frames")


def search_bit_map(fp32: nn.Module, config: QuantConfig, calibration: Frames, validation: Frames,
                   budget: ErrorBudget, best_effort: bool = False, progress: Progress | None = None,
                   sensitivity_frames: int | None = None) -> SearchResult:
    """The cheapest bit map found for ``budget`` (see the module docstring), starting from
    ``config``'s bits; the model is quantized from ``fp32`` with the map as ``config``
    overrides. ``calibration``: the frames ``quantize_loaded`` calibrates on (its first
    ``config.calib_frames`` also measure the sensitivity, or ``sensitivity_frames`` of them,
    evenly spread); ``validation``: frames disjoint from them and from the test frames, where
    the budget is checked."""
    return _Search(fp32, config, calibration, validation, budget, best_effort,
                   progress or _no_progress, sensitivity_frames).run()
