"""The quantized file: exact round trip, determinism, golden file, and clear errors."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from gaqtool.config import QuantConfig
from gaqtool.data.graph import make_batch
from gaqtool.errors import FormatError
from gaqtool.io.safetensors_io import FORMAT_VERSION, load_quantized, read_header, save_quantized
from gaqtool.potential import energy_and_forces
from gaqtool.packing import unpack_bits
from gaqtool.workflow import quantize_loaded
from tests.conftest import make_tiny_model

DATA = Path(__file__).parent.parent / "data"


def _quantized(train_frames, bits="w4a8", method="gaq", seed=0):
    config = QuantConfig.from_preset(bits, method=method, calib_frames=4, seed=seed)
    model, plan = quantize_loaded(make_tiny_model(), config, train_frames)
    return model, plan, config


@pytest.mark.parametrize("bits,method", [("w4a8", "gaq"), ("w2a8", "naive"), ("w8", "weight-only"),
                                         ("w4a16", "gaq")])
def test_save_load_reproduces_outputs_exactly(tmp_path, train_frames, test_frames, bits, method):
    model, plan, config = _quantized(train_frames, bits, method)
    path = save_quantized(tmp_path / "m.safetensors", model, config, plan, "ab" * 32)
    loaded = load_quantized(path)
    batch = make_batch(test_frames, [0, 1, 2], model.cutoff)
    e0, f0 = energy_and_forces(model, batch)
    e1, f1 = energy_and_forces(loaded, batch)
    assert torch.equal(e0, e1) and torch.equal(f0, f1)


def test_packed_weights_use_the_promised_bytes(tmp_path, train_frames):
    for bits, per_byte in (("w4a8", 2), ("w2a8", 4), ("w8a8", 1)):
        model, plan, config = _quantized(train_frames, bits)
        qfile = read_header(save_quantized(tmp_path / f"{bits}.safetensors", model, config, plan, "0" * 64))
        packed = qfile.tensors["layers.0.radial.out.weight_packed"]
        shape = tuple(qfile.tensors["layers.0.radial.out.weight_shape"].tolist())
        numel = shape[0] * shape[1]
        assert packed.dtype == torch.uint8 and packed.numel() == -(-numel // per_byte)
        values = unpack_bits(packed, config.weight_bits, shape)
        assert torch.equal(values, model.layers[0].radial.out.weight_int)
        assert "layers.0.radial.out.inner.weight" not in qfile.tensors


def test_same_inputs_and_seed_give_the_same_bytes_whatever_the_wall_times(tmp_path, train_frames):
    """Reports differ between runs only in their wall times, which the file leaves out (the
    same check through the real command line: tests/integration/test_cli_robustness.py)."""
    paths = []
    for name, seconds in (("a", 1.5), ("b", 7.25)):
        model, plan, config = _quantized(train_frames)
        report = {"x": 1, "y": [1, 2], "seconds": {"total": seconds}, "qat": {"seconds": seconds, "best_epoch": 0}}
        paths.append(save_quantized(tmp_path / f"{name}.safetensors", model, config, plan, "cd" * 32,
                                    report=report))
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert read_header(paths[0]).report == {"x": 1, "y": [1, 2], "qat": {"best_epoch": 0}}


def test_golden_v1_file_still_loads_and_reproduces_its_outputs(test_frames):
    model = load_quantized(DATA / "golden_v1.safetensors")
    expected = json.loads((DATA / "golden_v1_expected.json").read_text())
    energies, forces = energy_and_forces(model, make_batch(test_frames, expected["frames"], model.cutoff))
    assert torch.allclose(energies, torch.tensor(expected["energies_ev"], dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.allclose(forces, torch.tensor(expected["forces_ev_a"]), atol=1e-5)
    assert FORMAT_VERSION == "1"


def _rewrite_metadata(src: Path, dst: Path, change) -> None:
    data = src.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    change(header["__metadata__"])
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    dst.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length:])


def test_truncated_corrupted_and_wrong_version_files_give_format_errors(tmp_path, train_frames):
    model, plan, config = _quantized(train_frames)
    good = save_quantized(tmp_path / "good.safetensors", model, config, plan, "0" * 64)
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    corrupted = bytearray(data)
    corrupted[-100] ^= 0xFF
    (tmp_path / "corrupted.safetensors").write_bytes(bytes(corrupted))
    _rewrite_metadata(good, tmp_path / "version.safetensors",
                      lambda m: m.__setitem__("gaqtool.format_version", "99"))
    _rewrite_metadata(good, tmp_path / "foreign.safetensors", lambda m: m.clear())
    (tmp_path / "text.safetensors").write_text("hello")
    cases = {"truncated": "truncated or corrupted", "corrupted": "checksum", "version": "format version 99",
             "foreign": "not a gaqtool model", "text": "not a readable safetensors"}
    for name, message in cases.items():
        with pytest.raises(FormatError, match=message):
            load_quantized(tmp_path / f"{name}.safetensors")


def test_failed_write_leaves_nothing_behind(tmp_path, train_frames, monkeypatch):
    model, plan, config = _quantized(train_frames)
    import gaqtool.io.atomic as atomic

    def broken_replace(*args, **kwargs):  # the temporary file exists when the move fails
        assert len(list(tmp_path.iterdir())) == 1
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        save_quantized(tmp_path / "out.safetensors", model, config, plan, "0" * 64)
    assert list(tmp_path.iterdir()) == []
