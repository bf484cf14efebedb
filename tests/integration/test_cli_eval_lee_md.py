"""CLI tests for `gaqtool eval`, `gaqtool lee-check` and `gaqtool md` on a tiny model.

Normal runs go through Typer's CliRunner; user errors go through ``cli.app.main()`` (the single
error boundary) to check exit code 1, ``error:`` and no traceback.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import gaqtool.cli.app as app_module
from gaqtool.config import QuantConfig
from gaqtool.data.graph import make_batch
from gaqtool.data.spec import resolve_data
from gaqtool.io.checkpoint import save_checkpoint
from gaqtool.io.loading import file_sha256
from gaqtool.io.safetensors_io import save_quantized
from gaqtool.models.potential import DEFAULT_CONFIG, build_model
from gaqtool.potential import energy_and_forces
from gaqtool.workflow import quantize_loaded

torch.set_num_threads(1)
app_module._register()

TINY = dict(DEFAULT_CONFIG, num_channels=8, num_layers=2, lmax=2, num_heads=2, key_dim=4,
            species=[1, 6, 8], energy_shift={}, energy_scale=1.0, molecule="aspirin")
FAST = ["--threads", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    fp32 = save_checkpoint(directory / "tiny.pt", model, training={})
    calibration = resolve_data("rmd17", "train", None, "aspirin").frames
    config = QuantConfig.from_preset("w4a8", method="naive", calib_frames=4)
    quantized, plan = quantize_loaded(model, config, calibration)
    naive = save_quantized(directory / "tiny_naive.safetensors", quantized, config, plan, file_sha256(fp32))
    text = directory / "notes.txt"
    text.write_text("not a model\n")
    return {"dir": directory, "fp32": fp32, "naive": naive, "text": text}


def invoke(*args: str) -> dict | str:
    result = CliRunner().invoke(app_module.app, [*args, *FAST])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads(result.stdout)["data"] if "--json" in args else result.output


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """(exit code, stdout, stdout + stderr) of ``gaqtool ARGS`` through ``main()``."""
    monkeypatch.delenv("GAQTOOL_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["gaqtool", *args, *FAST])
    with pytest.raises(SystemExit) as exit_info:
        app_module.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.out + captured.err


# ----------------------------------------------------------------------------------------- eval

def test_eval_metrics_equal_hand_computed_mae(files):
    data = invoke("eval", str(files["fp32"]), "--data", "rmd17", "--frames", "3", "--batch-size", "2",
                  "--worst", "2", "--json")
    frames = resolve_data("rmd17", "test", None, "aspirin").frames.subset(range(3))
    model = build_model(TINY)
    model.load_state_dict(torch.load(files["fp32"], weights_only=True)["state_dict"])
    energies, forces = energy_and_forces(model.eval(), make_batch(frames, range(3), model.cutoff))
    energy_mae = np.abs(energies.detach().numpy() - frames.energies).mean() * 1000.0
    force_mae = np.abs(forces.detach().double().numpy() - np.concatenate(frames.forces)).mean() * 1000.0
    metrics = data["metrics"]
    assert metrics["num_frames"] == 3
    assert metrics["energy_mae_mev"] == pytest.approx(energy_mae, rel=1e-6)
    assert metrics["force_mae_mev_a"] == pytest.approx(force_mae, rel=1e-5)
    assert metrics["force_rmse_mev_a"] >= metrics["force_mae_mev_a"]
    per_frame = np.abs(forces.detach().double().numpy() - np.concatenate(frames.forces)).reshape(
        3, -1).mean(1) * 1000.0  # aspirin: equal atom counts
    worst = int(np.argmax(per_frame))
    assert len(data["worst"]) == 2
    assert data["worst"][0]["frame"] == worst
    assert data["worst"][0]["force_mae_mev_a"] == pytest.approx(per_frame[worst], rel=1e-5)
    assert data["worst"][0]["energy_error_mev"] == pytest.approx(
        abs(float(energies.detach()[worst]) - frames.energies[worst]) * 1000.0, rel=1e-6)
    assert data["worst"][0]["force_mae_mev_a"] >= data["worst"][1]["force_mae_mev_a"]
    assert "shipped sample" in data["data"]["note"]


def test_eval_quantized_human_output(files):
    output = invoke("eval", str(files["naive"]), "--data", "rmd17", "--frames", "2")
    assert "shipped sample" in output  # no rMD17 dir configured: it says so
    assert "MAE" in output and "RMSE" in output and "naive w4a8" in output


def test_eval_parity_plot(files):  # matplotlib is in the [test] extra: this must not skip
    plot = files["dir"] / "parity.png"
    data = invoke("eval", str(files["fp32"]), "--frames", "2", "--plot", str(plot), "--json")
    assert data["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(files["dir"].glob(".parity.png.*"))  # atomic: no temporary file left


# ------------------------------------------------------------------------------------ lee-check

def test_lee_fp32_floor_and_naive_model(files):
    data = invoke("lee-check", str(files["naive"]), "--fp32", str(files["fp32"]), "--frames", "2",
                  "--rotations", "2", "--localize", "--top", "3", "--json")
    floor, naive = data["rows"]
    assert floor["role"] == "fp32 floor" and floor["path"] == str(files["fp32"])
    assert floor["lee"]["force_mean_mev_a"] < 1e-3  # float32 noise
    assert naive["parent"] == str(files["fp32"])
    assert naive["lee"]["force_mean_mev_a"] > 100 * floor["lee"]["force_mean_mev_a"]
    assert naive["ratio_to_floor"] == pytest.approx(
        naive["lee"]["force_mean_mev_a"] / floor["lee"]["force_mean_mev_a"])
    assert naive["localization"][0]["kind"].startswith("quantized ")
    assert naive["localization"][0]["introduced_error"] > 1e-4
    assert data["exceeded"] == []


def test_lee_human_output_finds_parent_among_arguments(files):
    output = invoke("lee-check", str(files["fp32"]), str(files["naive"]), "--frames", "1",
                    "--rotations", "1")
    assert "floor" in output and "naive w4a8" in output
    assert "x" in output.split("vs FP32")[1]  # ratio column filled in


def test_lee_bare_command_puts_the_embedded_model_beside_naive_and_gaq(files, monkeypatch):
    monkeypatch.setattr("gaqtool.io.loading.default_model_path", lambda: files["fp32"])
    monkeypatch.setattr("gaqtool.io.checkpoint.default_model_path", lambda: files["fp32"])
    data = invoke("lee-check", "--frames", "1", "--rotations", "1", "--json")
    floor, naive, gaq = data["rows"]
    assert floor["path"] == str(files["fp32"]) and floor["ratio_to_floor"] == 1.0
    assert (naive["label"], gaq["label"]) == ("naive w4a8, ste forces", "gaq w4a8, ste forces")
    assert naive["parent"] == gaq["parent"] == str(files["fp32"])
    lee = [row["lee"]["force_mean_mev_a"] for row in (floor, naive, gaq)]
    assert lee[1] > 100 * lee[2] and lee[2] < 10 * lee[0]  # naive breaks symmetry; GAQ keeps the floor
    assert any("quantized from it on the fly" in note for note in data["notes"])
    # a quantized file made from the embedded model gets it as its floor without --fp32
    data = invoke("lee-check", str(files["naive"]), "--frames", "1", "--rotations", "1", "--json")
    assert [r["role"] for r in data["rows"]] == ["fp32 floor", "quantized"]


def test_lee_threshold_exit_code(files):
    args = ["lee-check", str(files["naive"]), "--fp32", str(files["fp32"]), "--frames", "1",
            "--rotations", "1", *FAST]
    failed = CliRunner().invoke(app_module.app, [*args, "--threshold", "1e-4"])
    assert failed.exit_code == 1
    assert "LEE above threshold" in failed.output and "tiny_naive.safetensors" in failed.output
    passed = CliRunner().invoke(app_module.app, [*args, "--threshold", "1000"])
    assert passed.exit_code == 0, passed.output


# ------------------------------------------------------------------------------------------- md

def test_md_two_models_same_start(files):
    trajectory = files["dir"] / "run.traj"
    data = invoke("md", str(files["fp32"]), str(files["naive"]), "--steps", "10", "--log-every", "5",
                  "--trajectory", str(trajectory), "--json")
    first, second = data["runs"]
    assert first["summary"]["steps_done"] == second["summary"]["steps_done"] == 10
    assert first["summary"]["temperature_start_k"] == second["summary"]["temperature_start_k"]
    assert not first["summary"]["blew_up"]
    assert abs(first["summary"]["max_abs_energy_deviation_mev_atom"]) < 1e-2
    assert len(first["series"]["time_ps"]) == 3
    for k in (1, 2):
        assert (files["dir"] / f"run_{k}.traj").is_file()


def test_md_uses_conservative_forces_unless_told_otherwise(files):
    """The file stores 'ste'; md integrates and reports E_s (activation rounding off) by default,
    so the E_q diagnostic moves against it; with --force-mode ste the two are one."""
    default = invoke("md", str(files["naive"]), "--steps", "10", "--quantized-energy", "--json")["runs"][0]
    straight = invoke("md", str(files["naive"]), "--steps", "10", "--force-mode", "ste",
                      "--quantized-energy", "--json")["runs"][0]
    plain = invoke("md", str(files["naive"]), "--steps", "10", "--json")["runs"][0]
    assert "max_abs_gap_change_mev_atom" not in plain["summary"]
    assert plain["summary"]["drift_mev_atom_ps"] == pytest.approx(default["summary"]["drift_mev_atom_ps"])
    assert default["label"].endswith("conservative forces") and straight["label"].endswith("ste forces")
    assert default["summary"]["max_abs_gap_change_mev_atom"] > 0
    assert straight["summary"]["max_abs_gap_change_mev_atom"] == 0


def test_eval_force_mode_overrides_the_file(files):
    stored = invoke("eval", str(files["naive"]), "--frames", "2", "--json")
    conservative = invoke("eval", str(files["naive"]), "--frames", "2", "--force-mode", "conservative", "--json")
    assert stored["model"]["label"].endswith("ste forces")
    assert conservative["model"]["label"].endswith("conservative forces")
    assert conservative["metrics"]["energy_mae_mev"] == pytest.approx(stored["metrics"]["energy_mae_mev"])
    assert conservative["metrics"]["force_mae_mev_a"] != pytest.approx(stored["metrics"]["force_mae_mev_a"], rel=1e-6)


def test_md_human_output(files, monkeypatch, capsys):
    code, stdout, output = run_main(monkeypatch, capsys, "md", str(files["fp32"]), "--steps", "3")
    assert code == 0
    table = stdout.splitlines()
    assert any("NVE velocity Verlet" in line and "3 steps" in line for line in table)
    assert any(line.startswith("│ steps run") and "3/3" in line for line in table)
    assert any("drift (meV/atom/ps)" in line and any(c.isdigit() for c in line.split("│")[-2]) for line in table)
    assert any("status" in line and "ok" in line for line in table)
    assert "start:" in output and "start:" not in stdout  # where it started: a log line on stderr


# ---------------------------------------------------------------------------------- user errors

@pytest.mark.parametrize("case", ["missing", "molecule", "text", "frame", "structure"])
def test_user_errors_exit_1_without_traceback(files, monkeypatch, capsys, case):
    args, message = {
        "missing": (["eval", str(files["dir"] / "missing.pt")], "missing.pt"),
        "molecule": (["eval", str(files["fp32"]), "--data", "rmd17:unobtainium"], "unobtainium"),
        "text": (["lee-check", str(files["text"])], "notes.txt"),
        "frame": (["md", str(files["fp32"]), "--frame", "100000", "--steps", "1"], "out of range"),
        "structure": (["md", str(files["fp32"]), "--structure", str(files["dir"] / "none.xyz")], "none.xyz"),
    }[case]
    code, _, output = run_main(monkeypatch, capsys, *args)
    assert code == 1
    assert "error:" in output and message in output
    assert "Traceback" not in output


def test_missing_matplotlib_is_a_user_error(files, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, output = run_main(monkeypatch, capsys, "eval", str(files["fp32"]), "--plot",
                               str(files["dir"] / "p.png"))
    assert code == 1 and "pip install matplotlib" in output
    assert not (files["dir"] / "p.png").exists()


def test_json_error_document(files, monkeypatch, capsys):
    code, stdout, _ = run_main(monkeypatch, capsys, "eval", str(files["dir"] / "missing.pt"), "--json")
    assert code == 1
    assert json.loads(stdout)["error"]["code"] == "ModelLoadError"


@pytest.mark.parametrize("command", ["eval", "lee-check"])
def test_a_quantized_file_given_as_fp32_parent_is_one_clear_error(files, monkeypatch, capsys, tmp_path, command):
    from ase import Atoms
    from ase.io import write

    frames = resolve_data("rmd17", "test", None, "aspirin").frames
    unlabelled = tmp_path / "positions_only.extxyz"   # eval needs the parent only without labels
    write(unlabelled, Atoms(numbers=frames.numbers[0], positions=frames.positions[0]))
    data = ["--data", str(unlabelled)] if command == "eval" else []
    code, _, output = run_main(monkeypatch, capsys, command, str(files["naive"]), "--fp32",
                               str(files["naive"]), "--frames", "1", *data)
    assert code == 1 and "Traceback" not in output
    assert "is a quantized file, not an FP32 parent" in output and "hint:" in output
