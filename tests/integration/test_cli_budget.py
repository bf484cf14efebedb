"""`gaqtool quantize --max-error`: one-line errors and no file for bad or impossible budgets,
--best-effort, and the report's bit map and promotions."""

from __future__ import annotations

import json

import pytest

FAST = ("--calib-frames", "2", "--eval-frames", "2", "--val-frames", "3", "--lee-frames", "1",
        "--lee-rotations", "1", "--weight-rounding", "nearest")


@pytest.mark.parametrize("budget,message", [
    ("forces=fast", "is not a number"),
    ("dipole=1.1", "unknown quantity"),
    ("forces=5meV/atom", "does not fit forces"),
])
def test_bad_budget_gives_one_error_line_and_no_file(cli, tiny_checkpoint, tmp_path, budget, message):
    out = tmp_path / "q.safetensors"
    result = cli("quantize", tiny_checkpoint, "-o", out, "--max-error", budget, *FAST)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert not list(tmp_path.glob("*q.safetensors*"))


def test_best_effort_needs_a_budget(cli, tiny_checkpoint, tmp_path):
    result = cli("quantize", tiny_checkpoint, "-o", tmp_path / "q.safetensors", "--best-effort")
    assert result.exit_code == 1 and "--best-effort needs --max-error" in result.stderr


def test_impossible_budget_writes_nothing_unless_best_effort(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "q.safetensors"
    refused = cli("quantize", tiny_checkpoint, "-o", out, "--max-error", "forces=1e-9meV/A", *FAST)
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not met even at W8A16" in errors[0] and "forces" in errors[0]
    assert not list(tmp_path.glob("*q.safetensors*"))
    kept = cli("quantize", tiny_checkpoint, "-o", out, "--max-error", "forces=1e-9meV/A", "--best-effort",
               "--json", *FAST)
    assert kept.exit_code == 0, kept.output
    budget = json.loads(kept.stdout)["data"]["budget"]
    assert budget["met"] is False and budget["test"]["met"] is False and out.is_file()


def test_report_shows_the_map_and_fits_80_columns(cli, tiny_checkpoint, tmp_path, monkeypatch):
    from gaqtool.cli.console import console

    monkeypatch.setattr(console, "width", 80)  # the console read COLUMNS when it was made
    out, report = tmp_path / "q.safetensors", tmp_path / "r.json"
    result = cli("quantize", tiny_checkpoint, "-o", out, "--report", report,
                 "--max-error", "forces=1meV/A,energy=0.1meV/atom", *FAST)
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, max(result.stdout.splitlines(), key=len)
    assert "bit map: weights" in result.stdout and "promotions" in result.stdout
    data = json.loads(report.read_text())
    assert data["budget"]["promotions"] and data["bit_map"]["weights"]
    assert set(data["budget"]["test"]["values"]) == {"forces", "energy"}
    inspected = cli("inspect", out, "--no-tensors")
    assert inspected.exit_code == 0 and max(len(line) for line in inspected.stdout.splitlines()) <= 80
    assert "chosen on test" in inspected.stdout
