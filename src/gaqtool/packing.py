"""Dense bit packing of signed low-bit integers into bytes.

A value ``v`` of width ``num_bits`` is stored as the unsigned offset ``v + 2**(num_bits - 1)``.
Offsets form a little-endian bit stream: bit ``j`` of value ``i`` is bit ``i * num_bits + j`` of
the stream, and stream bit ``k`` is bit ``k % 8`` of byte ``k // 8``. Hence int8 is one value per
byte, int4 two per byte (first value in the low nibble), int2 four per byte (first value in the
lowest two bits), and other widths straddle byte boundaries. The last byte is zero-padded.

>>> packed = pack_bits(torch.tensor([-8, 7, 0], dtype=torch.int8), num_bits=4)
>>> packed.tolist()  # offsets 0, 15, 8 -> bytes 0xF0, 0x08
[240, 8]
>>> unpack_bits(packed, num_bits=4, shape=(3,)).tolist()
[-8, 7, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gaqtool.errors import FormatError, InputError

__all__ = ["pack_bits", "unpack_bits", "packed_num_bytes"]


def _check_num_bits(num_bits: int) -> None:
    if isinstance(num_bits, bool) or not isinstance(num_bits, int) or not 1 <= num_bits <= 8:
        raise InputError(
            f"num_bits={num_bits!r} cannot be packed; allowed widths are integers 1..8",
            hint="choose a bit-width between 1 and 8",
        )


def _check_shape(shape: Sequence[int] | torch.Size) -> tuple[int, ...]:
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InputError(
            f"shape {dims} has a negative dimension", hint="pass a shape of nonnegative sizes"
        )
    return dims


def packed_num_bytes(numel: int, num_bits: int) -> int:
    """Bytes holding ``numel`` values of ``num_bits`` bits: ``ceil(numel * num_bits / 8)``."""
    _check_num_bits(num_bits)
    if numel < 0:
        raise InputError(f"numel={numel} is negative", hint="pass a nonnegative element count")
    return (numel * num_bits + 7) // 8


def pack_bits(values: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Pack signed integers densely into bytes; the input is not modified.

    Args:
        values: ``(*shape)`` any integer dtype, each in ``[-2**(num_bits-1), 2**(num_bits-1) - 1]``.
        num_bits: width of one value, 1..8.

    Returns:
        ``(packed_num_bytes(values.numel(), num_bits),)`` torch.uint8, on ``values.device``.

    Raises:
        InputError: ``num_bits`` outside 1..8, a non-integer dtype, or a value out of range.
    """
    _check_num_bits(num_bits)
    if values.dtype.is_floating_point or values.dtype.is_complex or values.dtype == torch.bool:
        raise InputError(
            f"pack_bits needs an integer tensor, got dtype {values.dtype}",
            hint="quantize the tensor to integers before packing",
        )
    offset = 1 << (num_bits - 1)
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() > 0:
        lo, hi = int(flat.min()), int(flat.max())
        if lo < -offset or hi > offset - 1:
            raise InputError(
                f"values span [{lo}, {hi}], outside the int{num_bits} range "
                f"[{-offset}, {offset - 1}]",
                hint="clamp the quantized values or use a wider num_bits",
            )
    unsigned = flat + offset  # (numel,) int64 in [0, 2**num_bits)
    num_bytes = packed_num_bytes(flat.numel(), num_bits)
    if 8 % num_bits == 0:
        per_byte = 8 // num_bits
        padded = torch.zeros(num_bytes * per_byte, dtype=torch.int64, device=flat.device)
        padded[: unsigned.numel()] = unsigned
        shifts = torch.arange(per_byte, device=flat.device) * num_bits  # (per_byte,)
        packed = (padded.view(num_bytes, per_byte) << shifts).sum(dim=1)
        return packed.to(torch.uint8)
    bit_index = torch.arange(num_bits, device=flat.device)
    bits = ((unsigned.unsqueeze(1) >> bit_index) & 1).reshape(-1)  # (numel * num_bits,)
    stream = torch.zeros(num_bytes * 8, dtype=torch.int64, device=flat.device)
    stream[: bits.numel()] = bits
    byte_shifts = torch.arange(8, device=flat.device)
    return (stream.view(num_bytes, 8) << byte_shifts).sum(dim=1).to(torch.uint8)


def unpack_bits(
    packed: torch.Tensor, num_bits: int, shape: tuple[int, ...] | torch.Size | list[int]
) -> torch.Tensor:
    """Exact inverse of :func:`pack_bits`.

    Args:
        packed: ``(packed_num_bytes(prod(shape), num_bits),)`` torch.uint8 (any shape is flattened).
        num_bits: width of one value, 1..8.
        shape: shape of the unpacked tensor.

    Returns:
        ``shape`` torch.int8 signed values, on ``packed.device``.

    Raises:
        InputError: ``num_bits`` outside 1..8 or a negative dimension in ``shape``.
        FormatError: ``packed`` is not uint8 or has the wrong number of bytes for ``shape``.
    """
    _check_num_bits(num_bits)
    dims = _check_shape(shape)
    numel = 1
    for d in dims:
        numel *= d
    if packed.dtype != torch.uint8:
        raise FormatError(
            f"packed data has dtype {packed.dtype}, expected torch.uint8",
            hint="the file may be corrupted or written by an incompatible tool",
        )
    expected = packed_num_bytes(numel, num_bits)
    if packed.numel() != expected:
        raise FormatError(
            f"packed data has {packed.numel()} bytes but shape {dims} at {num_bits} bits "
            f"needs {expected}",
            hint="the file is truncated or corrupted; re-export it",
        )
    offset = 1 << (num_bits - 1)
    raw = packed.reshape(-1).to(torch.int64)
    if 8 % num_bits == 0:
        per_byte = 8 // num_bits
        shifts = torch.arange(per_byte, device=raw.device) * num_bits
        unsigned = ((raw.unsqueeze(1) >> shifts) & ((1 << num_bits) - 1)).reshape(-1)
    else:
        byte_shifts = torch.arange(8, device=raw.device)
        stream = ((raw.unsqueeze(1) >> byte_shifts) & 1).reshape(-1)  # (num_bytes * 8,)
        bits = stream[: numel * num_bits].view(numel, num_bits)
        bit_index = torch.arange(num_bits, device=raw.device)
        unsigned = (bits << bit_index).sum(dim=1)
    return (unsigned[:numel] - offset).to(torch.int8).reshape(dims)
