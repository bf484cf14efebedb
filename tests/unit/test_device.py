"""Device selection (``--device``) and the data-follows-the-model rule of gaqtool.device."""

from __future__ import annotations

import pytest
import torch

from gaqtool.data.graph import make_batch
from gaqtool.data.spec import resolve_data
from gaqtool.device import _batch_to_model, model_device, place_model, select_device
from gaqtool.errors import InputError
from gaqtool.potential import energy_and_forces
from tests.conftest import make_tiny_model


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_and_auto_without_cuda(no_cuda):
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(" CPU ") == torch.device("cpu")
    assert select_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("name, words", [("cuda", "CUDA"), ("cuda:1", "CUDA"), ("tpu", "unknown device"),
                                         ("mps", "not supported"), ("", "unknown device")])
def test_unusable_devices_are_one_line_errors(no_cuda, name, words):
    with pytest.raises(InputError) as error:
        select_device(name)
    assert words in error.value.message and "\n" not in error.value.message
    assert "--device" in error.value.hint or "use one of" in error.value.hint


def test_cuda_index_is_checked_against_the_devices_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("cuda") == torch.device("cuda", 0)
    assert select_device("cuda:1") == torch.device("cuda", 1)
    assert select_device("auto") == torch.device("cuda", 0)
    with pytest.raises(InputError, match="2 CUDA device"):
        select_device("cuda:2")


def test_placed_model_gives_the_same_energies_and_forces():
    frames = resolve_data("rmd17", "test", None, "aspirin").frames
    model = make_tiny_model().eval()
    batch = make_batch(frames, [0, 1], model.cutoff)
    before = energy_and_forces(model, batch)
    placed = place_model(place_model(model, "cpu"), "cpu")  # idempotent: hooks registered once
    assert len(placed._forward_pre_hooks) == 1 and len(placed._forward_hooks) == 1
    after = energy_and_forces(placed, batch)
    torch.testing.assert_close(after[0], before[0])
    torch.testing.assert_close(after[1], before[1])


def test_a_batch_is_moved_to_the_model_and_the_caller_device_is_remembered():
    """With the model on another device (meta: shapes only) the hook hands the model a copy of
    the batch there, and remembers where the caller's data lives for the energies."""
    frames = resolve_data("rmd17", "test", None, "aspirin").frames
    model = make_tiny_model().to("meta")
    batch = make_batch(frames, [0], 5.0)
    moved = _batch_to_model(model, (batch,))
    assert model_device(model).type == "meta"
    assert moved[0].positions.device.type == "meta" and moved[0].edge_src.device.type == "meta"
    assert batch.positions.device.type == "cpu" and model._caller_device.type == "cpu"
    assert _batch_to_model(make_tiny_model(), (batch,)) is None  # same device: nothing copied


@pytest.mark.parametrize("command", ["quantize", "eval", "train"])
def test_cli_refuses_cuda_before_any_work(cli, no_cuda, tmp_path, command):
    out = tmp_path / "never.safetensors"
    args = {"quantize": ["quantize", "--bits", "w4a8", "-o", out],
            "eval": ["eval"], "train": ["train", "-o", tmp_path / "never.pt"]}[command]
    result = cli(*args, "--device", "cuda")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CUDA" in errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []
