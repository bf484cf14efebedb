"""Shared fixtures: a tiny reference model, its checkpoint, and the shipped rMD17 sample."""

from __future__ import annotations

import os

import pytest
import torch

from gaqtool.data.frames import read_npz
from gaqtool.data.spec import sample_path
from gaqtool.models.potential import DEFAULT_CONFIG, build_model

torch.set_num_threads(1)
os.environ.setdefault("COLUMNS", "160")

TINY_CONFIG = dict(DEFAULT_CONFIG, num_channels=8, num_layers=2, lmax=2, num_heads=2, key_dim=4,
                   species=[1, 6, 8], energy_shift={"1": -13.6, "6": -1029.0, "8": -2040.0},
                   energy_scale=1.0, molecule="aspirin")


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch):
    """No user rMD17 directory leaks into tests; no CI-dependent behaviour."""
    monkeypatch.delenv("GAQTOOL_RMD17_DIR", raising=False)
    monkeypatch.delenv("CI", raising=False)  # CI=true turns progress bars off; tests render them


@pytest.fixture(scope="session")
def test_frames():
    return read_npz(sample_path("test"))


@pytest.fixture(scope="session")
def train_frames():
    return read_npz(sample_path("train"))


def make_tiny_model(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(dict(TINY_CONFIG, **overrides))
    with torch.no_grad():  # non-trivial gates and attention so that every path carries signal
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    from gaqtool.io.checkpoint import save_checkpoint

    path = tmp_path / "tiny.pt"
    save_checkpoint(path, make_tiny_model(), training={"note": "test fixture"})
    return path


class CliResult:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run ``gaqtool ARGS`` through the real entry point (error boundary included)."""
    from gaqtool.cli.app import main

    def run(*args: str) -> CliResult:
        monkeypatch.setattr("sys.argv", ["gaqtool", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run
