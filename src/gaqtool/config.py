"""Quantization configuration: a frozen, versioned, serialisable dataclass and preset parsing.

``QuantConfig.from_preset("w4a8")`` gives 4-bit weights and 8-bit activations; ``w8`` or
``w4a16``/``w4`` variants cover weight-only and 16-bit activations.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from enum import Enum
from typing import Any

from gaqtool.errors import InputError

__all__ = ["DEFAULT_KEEP_FP32", "DEFAULT_KEEP_WIDE", "SMALL_FAN_IN_BITS", "Method", "ObserverKind", "WeightClip",
           "WeightRounding", "DirectionMode", "ForceMode", "QATTargets",
           "QuantConfig", "QUANT_CONFIG_VERSION", "parse_bits", "FP32_BITS", "WEIGHT_LEVELS",
           "ACTIVATION_LEVELS"]

QUANT_CONFIG_VERSION = 1


class Method(str, Enum):
    """gaq: MDDQ activations + per-channel weights; naive: per-tensor min-max on everything,
    l>0 components rounded like plain numbers; weight-only: weights quantized, activations FP32."""

    GAQ = "gaq"
    NAIVE = "naive"
    WEIGHT_ONLY = "weight-only"


class ObserverKind(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"


class WeightClip(str, Enum):
    """How per-channel weight scales are chosen: from the max |w| of each channel, or from the
    clipped max that minimises the channel's squared rounding error (weights only; no data)."""

    MINMAX = "minmax"
    MSE = "mse"


class WeightRounding(str, Enum):
    """How weights are rounded onto their grid: each to its nearest grid point, or by GPTQ
    (``gaqtool.quant.gptq``: row by row, the rounding error pushed onto the rows not yet rounded
    so that the layer's outputs and their derivatives on the calibration molecules move least)."""

    NEAREST = "nearest"
    GPTQ = "gptq"


class DirectionMode(str, Enum):
    """How MDDQ rounds the direction of an l>0 block: per-component grid + re-normalisation,
    nearest point of a spherical codebook (l=1; other l use the component grid), float16, or
    the component grid in an equivariant local frame built from each row's own l=1 channels
    (``gaqtool.quant.frames``; same bits as ``component``, rounding commutes with rotations)."""

    COMPONENT = "component"
    CODEBOOK = "codebook"
    FP16 = "fp16"
    FRAME = "frame"


class ForceMode(str, Enum):
    """How forces of an activation-quantized model are computed.

    ste: forces = -dE/dx through the model with every rounding treated as the identity in the
    backward pass (straight-through). The quantized energy is piecewise constant, so these
    forces are not its exact gradient; energy conservation is measured, not assumed.
    conservative: forces = -dE_s/dx of E_s, the same model with activation rounding switched
    off (weights stay quantized), so dynamics conserve kinetic energy + E_s; the reported
    energy is still the activation-quantized E_q (a second, gradient-free pass). E_q - E_s is
    the activation-rounding error of the energy, bounded and measured by ``gaqtool md``.

    A file stores 'ste' by default, so that eval, lee-check and the report measure the forces of
    the activation-quantized network itself (conservative forces are exactly equivariant, which
    would hide the symmetry that activation rounding breaks). Dynamics (``gaqtool md``,
    ``GAQCalculator``) default to 'conservative': measured on the embedded aspirin model (W4A8),
    its forces are as accurate as STE's (97.3 vs 96.6 meV/A) and its NVE dynamics conserve
    E_s + E_kin as well as the FP32 parent conserves its energy, while STE forces drift ~300x
    more. QAT always trains straight-through.
    """

    STE = "ste"
    CONSERVATIVE = "conservative"


class QATTargets(str, Enum):
    """What the QAT loss fits: the FP32 parent's predictions (distillation) or the DFT labels."""

    TEACHER = "teacher"
    LABELS = "labels"


# Kept in FP32 unless told otherwise: the module with the species-embedding role (each backend
# says which module that is; ``gaqtool.potential.ROLES``). The paper keeps the first and last
# layers in FP32. It is a few hundred to a few ten thousand numbers, and at 4 bits its
# per-species feature error enters every layer; GPTQ cannot compensate it. Measured on the
# embedded aspirin model (4 x 32 numbers), gaq W4A8, 1000 test frames: force MAE 96.6 -> 76.4
# meV/A for ~0.4 KB; on SevenNet-0 (89 x 128), W8 moves forces 17 -> 8.6 meV/A with it FP32.
DEFAULT_KEEP_FP32: tuple[str, ...] = ("role:species_embedding",)

# Weight bits of layers with a small fan-in (at most QuantConfig.small_fan_in inputs per output):
# each output mixes few inputs, so their rounding errors do not average out, and such layers are
# cheap to keep wider. In the reference potential this is the first layer of every radial MLP
# (8 Bessel functions -> 64): forces are derivatives of the radial functions, and a rounding
# error on the n-th Bessel weight enters them ~n times amplified. Measured on the embedded
# aspirin model (docs/studies-aspirin.md): W4A8 force MAE 76 -> ~58 meV/A for ~770 bytes.
SMALL_FAN_IN_BITS = 8

# Bits of a tensor left in float32 in the per-module and per-grid bit overrides.
FP32_BITS = 32
WEIGHT_LEVELS = (2, 4, 8, FP32_BITS)
"""Weight bits a module can have, narrowest first (the promotion ladder of an error budget)."""
ACTIVATION_LEVELS = (8, 16, FP32_BITS)
"""Activation bits a quantized input (a grid) can have, narrowest first."""

# Modules whose weights use SMALL_FAN_IN_BITS whatever their fan-in (roles or path patterns).
DEFAULT_KEEP_WIDE: tuple[str, ...] = ()


def parse_bits(text: str) -> tuple[int, int | None]:
    """'w4a8' -> (4, 8); 'w8' or 'w8a32' -> (8, None) (weight-only)."""
    match = re.fullmatch(r"w(\d+)(?:a(\d+))?", text.strip().lower())
    if not match:
        raise InputError(f"cannot parse --bits '{text}'",
                         hint="use wXaY with X in 2, 4, 8 and Y in 8, 16 (or wX / wXa32 for weight-only)")
    weight_bits = int(match.group(1))
    act_bits = int(match.group(2)) if match.group(2) else None
    if weight_bits not in (2, 4, 8):
        raise InputError(f"weight bits must be 2, 4 or 8, got {weight_bits}")
    if act_bits == 32:
        act_bits = None
    if act_bits not in (None, 8, 16):
        raise InputError(f"activation bits must be 8 or 16 (or 32 / omitted for none), got {act_bits}")
    return weight_bits, act_bits


@dataclass(frozen=True)
class QuantConfig:
    """Everything that decides the numbers of a quantized model (stored in the output file).

    weight_bits:      2, 4 or 8 (signed, symmetric)
    activation_bits:  8, 16, or None for weight-only
    group_size:       None = one scale per output channel; else per group of input channels
    observer:         calibration statistic for activation ranges
    weight_clip:      per-channel weight scales from min-max or the MSE-optimal clipping ratio
    weight_rounding:  'nearest', or 'gptq' (error-compensating rounding fitted on the
                      calibration molecules; same grid and scales, different integers)
    direction_mode:   MDDQ direction rounding ('frame' default: equivariant local frames)
    direction_bits:   bits per component for MDDQ 'component' / 'frame' directions
    codebook_size:    points of the spherical codebook for 'codebook' directions (l=1)
    keep_fp32:        modules left in FP32: 'role:<role>' (a role the model's backend
                      declares, e.g. 'role:species_embedding') or an fnmatch pattern of module
                      paths; None (default): ``DEFAULT_KEEP_FP32`` (the species embedding) for
                      'gaq' and 'weight-only', nothing for 'naive' (it quantizes every tensor)
    small_fan_in_bits: weight bits of layers with at most ``small_fan_in`` inputs per output (0:
                      no exception); None (default): ``SMALL_FAN_IN_BITS`` for 'gaq' and
                      'weight-only' when it is wider than ``weight_bits``, 0 for 'naive'
    small_fan_in:     the fan-in threshold of ``small_fan_in_bits``
    keep_wide:        modules whose weights also use ``small_fan_in_bits`` whatever their
                      fan-in: 'role:<role>' or fnmatch patterns, as ``keep_fp32``; None
                      (default): ``DEFAULT_KEEP_WIDE`` for 'gaq' and 'weight-only', () for 'naive'
    weight_bits_overrides: (module path, bits) pairs that override every other rule for that
                      module's weights: 2, 4, 8, or 32 (weights left float32, inputs still
                      quantized); what an error budget chooses (``gaqtool.quant.mixed_precision``)
    activation_bits_overrides: (grid, bits) pairs, a grid being one quantized input
                      ``<module path>.input_quantizers.<i>``: 8, 16 or 32 (input left float32)
    energy_correction: shift the per-atom energy by the mean (FP32 - quantized) energy per atom
                      on the calibration frames (label-free bias correction; rounding errors of
                      21 atomic energies add up to a near-constant offset)
    """

    weight_bits: int = 4
    activation_bits: int | None = 8
    group_size: int | None = None
    method: Method = Method.GAQ
    observer: ObserverKind = ObserverKind.MINMAX
    weight_clip: WeightClip = WeightClip.MSE
    weight_rounding: WeightRounding = WeightRounding.GPTQ
    percentile: float = 99.99
    direction_mode: DirectionMode = DirectionMode.FRAME
    direction_bits: int = 8
    codebook_size: int = 256
    calib_frames: int = 32
    keep_fp32: tuple[str, ...] | None = None
    small_fan_in_bits: int | None = None
    small_fan_in: int = 16
    keep_wide: tuple[str, ...] | None = None
    force_mode: ForceMode = ForceMode.STE
    weight_bits_overrides: tuple[tuple[str, int], ...] = ()
    activation_bits_overrides: tuple[tuple[str, int], ...] = ()
    energy_correction: bool = True
    seed: int = 0
    version: int = QUANT_CONFIG_VERSION

    def __post_init__(self) -> None:
        if self.weight_bits not in (2, 4, 8):
            raise InputError(f"weight_bits must be 2, 4 or 8, got {self.weight_bits}")
        if self.activation_bits not in (None, 8, 16):
            raise InputError(f"activation_bits must be 8, 16 or None, got {self.activation_bits}")
        if self.group_size is not None and self.group_size < 1:
            raise InputError(f"--group-size must be positive, got {self.group_size}")
        if not 1 <= self.direction_bits <= 16:
            raise InputError(f"--direction-bits must be in 1..16, got {self.direction_bits}")
        if self.codebook_size < 4:
            raise InputError(f"codebook size must be at least 4, got {self.codebook_size}")
        if not 50.0 < self.percentile <= 100.0:
            raise InputError(f"--percentile must be in (50, 100], got {self.percentile}")
        if self.calib_frames < 1:
            raise InputError(f"--calib-frames must be at least 1, got {self.calib_frames}")
        for name, enum in (("method", Method), ("observer", ObserverKind), ("weight_clip", WeightClip),
                           ("weight_rounding", WeightRounding), ("direction_mode", DirectionMode),
                           ("force_mode", ForceMode)):
            value = getattr(self, name)
            if not isinstance(value, enum):
                try:
                    object.__setattr__(self, name, enum(value))
                except ValueError:
                    allowed = ", ".join(e.value for e in enum)
                    raise InputError(f"unknown {name.replace('_', '-')} '{value}'",
                                     hint=f"choose one of: {allowed}") from None
        if self.small_fan_in_bits is None:
            wider = self.method != Method.NAIVE and SMALL_FAN_IN_BITS > self.weight_bits
            object.__setattr__(self, "small_fan_in_bits", SMALL_FAN_IN_BITS if wider else 0)
        if self.small_fan_in_bits not in (0, 2, 4, 8):
            raise InputError(f"--small-fan-in-bits must be 0 (off), 2, 4 or 8, got {self.small_fan_in_bits}")
        if self.small_fan_in < 1:
            raise InputError(f"--small-fan-in must be at least 1, got {self.small_fan_in}")
        if self.keep_wide is None:
            object.__setattr__(self, "keep_wide", () if self.method == Method.NAIVE else DEFAULT_KEEP_WIDE)
        object.__setattr__(self, "keep_wide", tuple(self.keep_wide))
        if self.keep_fp32 is None:
            object.__setattr__(self, "keep_fp32", () if self.method == Method.NAIVE else DEFAULT_KEEP_FP32)
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        object.__setattr__(self, "weight_bits_overrides",
                           _overrides(self.weight_bits_overrides, WEIGHT_LEVELS, "weight"))
        object.__setattr__(self, "activation_bits_overrides",
                           _overrides(self.activation_bits_overrides, ACTIVATION_LEVELS, "activation"))
        if self.activation_bits_overrides and not self.quantizes_activations:
            raise InputError("activation bit overrides need quantized activations",
                             hint="use --bits wXaY with --method gaq or naive")

    @property
    def weight_bits_of(self) -> dict[str, int]:
        """{module path: weight bits} of the overrides."""
        return dict(self.weight_bits_overrides)

    @property
    def activation_bits_of(self) -> dict[str, int]:
        """{grid: activation bits} of the overrides."""
        return dict(self.activation_bits_overrides)

    @property
    def quantizes_activations(self) -> bool:
        return self.activation_bits is not None and self.method != Method.WEIGHT_ONLY

    @property
    def bits_label(self) -> str:
        return f"w{self.weight_bits}" + (f"a{self.activation_bits}" if self.quantizes_activations else "")

    @classmethod
    def from_preset(cls, bits: str, **overrides: Any) -> "QuantConfig":
        weight_bits, act_bits = parse_bits(bits)
        return cls(weight_bits=weight_bits, activation_bits=act_bits, **overrides)

    def replace(self, **changes: Any) -> "QuantConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Enum):
                data[key] = value.value
        data["keep_fp32"] = list(self.keep_fp32)
        data["keep_wide"] = list(self.keep_wide)
        for key in ("weight_bits_overrides", "activation_bits_overrides"):
            if getattr(self, key):  # written only when set: files without a bit map stay 0.2-readable
                data[key] = dict(getattr(self, key))
            else:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "QuantConfig":
        version = data.get("version")
        if version != QUANT_CONFIG_VERSION:
            raise InputError(f"quantization config version {version!r} is not supported "
                             f"(this gaqtool reads {QUANT_CONFIG_VERSION})")
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown quantization config keys: {', '.join(sorted(unknown))}")
        values = dict(data)
        values.setdefault("weight_rounding", WeightRounding.NEAREST.value)  # files before 0.1.2
        values.setdefault("small_fan_in_bits", 0)  # files before 0.1.3: every layer at weight_bits
        values["keep_fp32"] = tuple(values.get("keep_fp32", ()))
        values["keep_wide"] = tuple(values.get("keep_wide", ()))  # files before 0.2: none
        for key in ("weight_bits_overrides", "activation_bits_overrides"):  # before 0.3: none
            values[key] = tuple(dict(values.get(key) or {}).items())
        return cls(**values)


def _overrides(pairs, levels: tuple[int, ...], what: str) -> tuple[tuple[str, int], ...]:
    """Bit overrides as sorted (name, bits) pairs (from pairs or a dict), each bits in ``levels``."""
    items = pairs.items() if isinstance(pairs, dict) else pairs
    out = {}
    for name, bits in items:
        if int(bits) not in levels:
            raise InputError(f"{what} bits of '{name}' must be one of "
                             f"{', '.join(map(str, levels))}, got {bits}")
        out[str(name)] = int(bits)
    return tuple(sorted(out.items()))
