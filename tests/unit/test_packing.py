"""Tests of gaqtool.packing: dense bit packing round trips, byte counts and errors."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gaqtool.errors import FormatError, InputError
from gaqtool.packing import pack_bits, packed_num_bytes, unpack_bits

torch.set_num_threads(1)

shapes = st.lists(st.integers(min_value=0, max_value=7), min_size=0, max_size=3)


def _random_values(shape: tuple[int, ...], num_bits: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1)
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64)


@settings(max_examples=120, deadline=None)
@given(
    num_bits=st.integers(min_value=1, max_value=8),
    shape=shapes,
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    dtype=st.sampled_from([torch.int8, torch.int16, torch.int32, torch.int64]),
)
def test_round_trip_property(num_bits: int, shape: list[int], seed: int, dtype: torch.dtype):
    values = _random_values(tuple(shape), num_bits, seed).to(dtype)
    before = values.clone()
    packed = pack_bits(values, num_bits)
    assert torch.equal(values, before), "pack_bits modified its input"
    assert packed.dtype == torch.uint8 and packed.dim() == 1
    assert packed.numel() == packed_num_bytes(values.numel(), num_bits)
    out = unpack_bits(packed, num_bits, shape)
    assert out.dtype == torch.int8
    assert out.shape == torch.Size(shape)
    assert torch.equal(out.to(torch.int64), values.to(torch.int64))


def test_round_trip_fixed_shapes_all_widths():
    for num_bits in range(1, 9):
        for shape in [(0,), (1,), (3, 5, 7), (2, 0, 3), (), (1, 1, 1)]:
            values = _random_values(shape, num_bits, seed=num_bits)
            out = unpack_bits(pack_bits(values, num_bits), num_bits, torch.Size(shape))
            assert torch.equal(out.to(torch.int64), values), (num_bits, shape)


def test_extreme_values_round_trip():
    for num_bits in range(1, 9):
        lo, hi = -(2 ** (num_bits - 1)), 2 ** (num_bits - 1) - 1
        values = torch.tensor([lo, hi, hi, lo, lo], dtype=torch.int32)
        out = unpack_bits(pack_bits(values, num_bits), num_bits, [5])
        assert out.tolist() == values.tolist()


def test_byte_counts():
    assert packed_num_bytes(10, 8) == 10
    assert packed_num_bytes(10, 4) == 5
    assert packed_num_bytes(11, 4) == 6
    assert packed_num_bytes(8, 2) == 2
    assert packed_num_bytes(9, 2) == 3
    assert packed_num_bytes(8, 3) == 3
    assert packed_num_bytes(0, 5) == 0
    assert pack_bits(torch.zeros(7, dtype=torch.int8), 4).numel() == 4
    assert pack_bits(torch.zeros(7, dtype=torch.int8), 2).numel() == 2
    assert pack_bits(torch.zeros(7, dtype=torch.int8), 8).numel() == 7


def test_int4_layout_low_nibble_first():
    # offsets: -8 -> 0, 7 -> 15, 0 -> 8
    packed = pack_bits(torch.tensor([-8, 7, 0]), 4)
    assert packed.tolist() == [0xF0, 0x08]


def test_int2_layout_and_int8_offset():
    # offsets 0,1,2,3 -> 0b11_10_01_00
    assert pack_bits(torch.tensor([-2, -1, 0, 1]), 2).tolist() == [0b11100100]
    assert pack_bits(torch.tensor([-128, 0, 127]), 8).tolist() == [0, 128, 255]


def test_int3_bitstream_layout():
    # offsets 7, 0, 1 -> stream bits (LSB first) 111 000 100 | 0 padding
    # -> byte0 = 0b01000111 (bits 0..2 and bit 6), byte1 = 0
    assert pack_bits(torch.tensor([3, -4, -3]), 3).tolist() == [0b01000111, 0]
    # offsets 1, 0, 7 -> value 2 straddles bytes: stream bits 100 000 111 -> bits 0, 6, 7, 8
    assert pack_bits(torch.tensor([-3, -4, 3]), 3).tolist() == [0b11000001, 0b00000001]


def test_out_of_range_raises():
    for num_bits in range(1, 9):
        hi = 2 ** (num_bits - 1)
        try:
            pack_bits(torch.tensor([0, hi]), num_bits)
        except InputError:
            pass
        else:
            raise AssertionError(f"no error for {hi} at {num_bits} bits")
        try:
            pack_bits(torch.tensor([-hi - 1]), num_bits)
        except InputError:
            pass
        else:
            raise AssertionError(f"no error for {-hi - 1} at {num_bits} bits")


def test_invalid_num_bits_and_dtype_raise():
    import pytest

    for bad in (0, 9, -1):
        with pytest.raises(InputError):
            pack_bits(torch.zeros(3, dtype=torch.int8), bad)
        with pytest.raises(InputError):
            unpack_bits(torch.zeros(3, dtype=torch.uint8), bad, (3,))
    with pytest.raises(InputError):
        pack_bits(torch.zeros(3), 4)


def test_wrong_packed_length_raises_format_error():
    import pytest

    packed = pack_bits(torch.zeros((3, 5), dtype=torch.int8), 4)  # 8 bytes
    with pytest.raises(FormatError):
        unpack_bits(packed[:-1], 4, (3, 5))
    with pytest.raises(FormatError):
        unpack_bits(torch.cat([packed, packed[:1]]), 4, (3, 5))
    with pytest.raises(FormatError):
        unpack_bits(packed.to(torch.int16), 4, (3, 5))
