"""`gaqtool quantize` / `gaqtool inspect` end to end: human and --json modes, exit codes, no partial files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gaqtool.io.safetensors_io import load_quantized, read_header


def test_quantize_human_mode_writes_file_and_report(cli, tiny_checkpoint, tmp_path):
    out, report = tmp_path / "q.safetensors", tmp_path / "report.json"
    result = cli("quantize", tiny_checkpoint, "--bits", "w4a8", "-o", out, "--report", report,
                 "--calib-frames", "4", "--eval-frames", "6", "--lee-frames", "2", "--lee-rotations", "2")
    assert result.exit_code == 0, result.output
    assert "shipped sample" in result.stderr and "force MAE" in result.stdout  # logs / results
    data = json.loads(report.read_text())
    assert data["bits"] == "w4a8" and data["method"] == "gaq"
    assert data["accuracy"]["fp32"]["num_frames"] == 6
    # it rounds (the accuracy moves) yet, with frame directions, stays near the FP32 LEE floor
    assert data["accuracy"]["quantized"]["force_mae_mev_a"] != data["accuracy"]["fp32"]["force_mae_mev_a"]
    assert data["lee"]["quantized"]["force_mean_mev_a"] < 10 * data["lee"]["fp32"]["force_mean_mev_a"] + 1e-3
    assert data["size"]["quantized_file_bytes"] == out.stat().st_size
    assert any(m["status"] == "fp32" and m["reason"] for m in data["modules"])
    model = load_quantized(out)
    assert model.quant_config.bits_label == "w4a8"
    assert model.quant_config.keep_fp32 == ("role:species_embedding",)
    # the stored report names the source by file name: the bytes do not depend on its directory
    assert read_header(out).report["source"]["path"] == Path(tiny_checkpoint).name
    assert data["source"]["path"] == str(tiny_checkpoint)


def test_keep_fp32_none_quantizes_every_module(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "all.safetensors"
    result = cli("quantize", tiny_checkpoint, "--bits", "w4a8", "-o", out, "--keep-fp32", "none", "--json",
                 "--calib-frames", "2", "--eval-frames", "2", "--lee-frames", "1", "--lee-rotations", "1")
    assert result.exit_code == 0, result.output
    modules = {m["path"]: m for m in json.loads(result.stdout)["data"]["modules"]}
    assert modules["embedding"]["status"] == "quantized"
    assert load_quantized(out).quant_config.keep_fp32 == ()


def test_quantize_json_mode_and_inspect(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "n.safetensors"
    result = cli("quantize", tiny_checkpoint, "--bits", "w2a8", "--method", "naive", "-o", out, "--json",
                 "--calib-frames", "2", "--eval-frames", "2", "--lee-frames", "1", "--lee-rotations", "1")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    assert data["bits"] == "w2a8" and data["config"]["method"] == "naive"
    inspected = cli("inspect", out, "--json")
    assert inspected.exit_code == 0
    info = json.loads(inspected.stdout)["data"]
    packed = [t for t in info["tensors"] if t["name"].endswith("_packed")]
    assert packed and all(t["bits"] == 2 for t in packed)
    assert info["metadata"]["gaqtool.format_version"] == "1"
    # the file's plan leaves out num_weights (it is in the shapes); inspect puts it back, equal
    # to what quantize reported
    reported = {m["path"]: m.get("num_weights") for m in data["modules"]}
    assert all(info["modules"][p].get("num_weights") == n for p, n in reported.items() if n)
    stored = read_header(out)
    assert not any("num_weights" in e or e.get("reason") == "" for e in stored.plan["entries"].values())
    # weight_bits is stored only where it differs from --bits, and read back everywhere
    raw = json.loads(stored.raw_metadata["gaqtool.plan"])["entries"]
    assert not any(e.get("weight_bits") == 2 for e in raw.values())
    assert all(stored.plan["entries"][p]["weight_bits"] == m["weight_bits"] for p, m in
               ((m["path"], m) for m in data["modules"]) if m["status"] == "quantized")
    assert "config" not in stored.report and stored.report["bits"] == "w2a8"
    human = cli("inspect", out)
    assert human.exit_code == 0 and "naive w2a8" in human.stdout


@pytest.mark.parametrize("args,message", [
    (["--bits", "w3a8"], "weight bits must be 2, 4 or 8"),
    (["--bits", "banana"], "cannot parse --bits"),
    (["--eval-data", "/nonexistent/frames.xyz"], "data file not found"),
    (["--calib-data", "rmd17:unobtainium"], "unknown rMD17 molecule"),
])
def test_bad_input_gives_one_error_line_and_no_file(cli, tiny_checkpoint, tmp_path, args, message):
    out = tmp_path / "q.safetensors"
    result = cli("quantize", tiny_checkpoint, "-o", out, "--calib-frames", "2", *args)
    assert result.exit_code == 1
    assert "error: " in result.stderr and message in result.stderr
    assert "Traceback" not in result.output
    assert list(tmp_path.glob("q.safetensors*")) == [] and list(tmp_path.glob(".q.safetensors*")) == []


def test_missing_or_foreign_model_files(cli, tmp_path):
    missing = cli("quantize", tmp_path / "nope.pt", "-o", tmp_path / "x.safetensors")
    assert missing.exit_code == 1 and "model file not found" in missing.stderr
    text = tmp_path / "model.pt"
    text.write_text("not a checkpoint")
    foreign = cli("quantize", text, "-o", tmp_path / "x.safetensors")
    assert foreign.exit_code == 1 and "cannot read" in foreign.stderr and "Traceback" not in foreign.output


def test_pickled_checkpoint_needs_explicit_opt_in(cli, tmp_path):
    import torch

    from tests.conftest import make_tiny_model

    model = make_tiny_model()
    path = tmp_path / "pickled.pt"
    torch.save({"gaqtool_checkpoint": 1, "model_config": model.config, "state_dict": model.state_dict(),
                "training": {"when": ValueError("a pickled object")}}, path)
    refused = cli("quantize", path, "-o", tmp_path / "x.safetensors", "--calib-frames", "2")
    assert refused.exit_code == 1 and "--trust-pickle" in refused.stderr
    accepted = cli("quantize", path, "-o", tmp_path / "x.safetensors", "--trust-pickle", "--calib-frames", "2",
                   "--eval-frames", "2", "--lee-frames", "1", "--lee-rotations", "1", "--json")
    assert accepted.exit_code == 0, accepted.output


COMMANDS = ("quantize", "train", "eval", "lee-check", "inspect", "md", "bench")


def test_help_for_every_command(cli):
    listed = cli("--help")
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.stdout.split("Commands:")[1].strip().splitlines()] == \
        ["train", *[c for c in COMMANDS if c != "train"]]
    for command in COMMANDS:
        result = cli(command, "--help")
        assert result.exit_code == 0, (command, result.output)
        assert result.stdout.startswith("Usage: ") and f" {command} [OPTIONS]" in result.stdout
        assert "--help" in result.stdout and "Traceback" not in result.output
    result = cli("--version")
    assert result.exit_code == 0 and result.stdout.strip().startswith("gaqtool 0.")


def test_quantize_with_qat_writes_a_loadable_file_with_its_summary(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "qat.safetensors"
    result = cli("quantize", tiny_checkpoint, "--bits", "w4a8", "-o", out, "--json", "--qat-epochs", "1",
                 "--vector-warmup", "0", "--qat-batch-size", "16", "--calib-frames", "4", "--eval-frames", "4",
                 "--lee-frames", "1", "--lee-rotations", "1", "--qat-ema-decay", "0.5")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    assert data["qat"]["options"]["targets"] == "teacher" and data["qat"]["best_epoch"] == 0
    assert data["qat"]["options"]["ema_decay"] == 0.5
    assert data["config"]["weight_clip"] == "minmax"  # QAT's default start
    model = load_quantized(out)
    assert model.quant_config.weight_clip.value == "minmax"
    stored = read_header(out).report["qat"]
    assert stored["options"]["epochs"] == 1 and "history" not in stored and data["qat"]["history"]
