"""What a careful user meets on the command line: every bad input ends in one ``error:`` line
(exit != 0, no traceback, no file left behind), Ctrl-C ends in exit 130 (md keeps what it ran),
results go to stdout and logs to stderr, reports say what is true, and the same inputs give the
same bytes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from gaqtool.data.spec import sample_path

SMALL = ["--calib-frames", "2", "--eval-frames", "2", "--lee-frames", "1", "--lee-rotations", "1", "--threads", "1"]
SRC = Path(__file__).resolve().parents[2] / "src"


class NotAllowlisted:
    """A class a checkpoint may pickle but gaqtool's loader refuses."""


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _bad_inputs(root: Path, checkpoint: Path) -> list[tuple[list, str]]:
    """(arguments, what the error line says) for every bad input; creates the files they use."""
    sample = sample_path("test").read_bytes()
    (root / "empty.npz").write_bytes(b"")
    (root / "random.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "truncated.npz").write_bytes(sample[: len(sample) // 2])
    corrupt = bytearray(sample)
    corrupt[200:400] = bytes(b ^ 0xFF for b in corrupt[200:400])
    (root / "corrupt.npz").write_bytes(bytes(corrupt))
    (root / "dir.npz").mkdir()
    (root / "folder").mkdir()
    (root / "folder.safetensors").mkdir()
    (root / "plain").write_text("a file, not a directory\n")
    torch.save({"gaqtool_checkpoint": 1, "thing": NotAllowlisted()}, root / "pickled.pt")
    out, plain = root / "q.safetensors", root / "plain"
    quantize = ["quantize", checkpoint, *SMALL]
    return [
        ([*quantize, "-o", root / "folder"], "is a directory"),
        ([*quantize, "-o", plain / "q.safetensors"], "is not a directory"),
        ([*quantize, "-o", "/proc/gaqtool-none/q.safetensors"], "cannot be written"),
        ([*quantize, "-o", out, "--report", root / "folder"], "--report"),
        ([*quantize, "-o", out, "--report", plain / "r.json"], "is not a directory"),
        ([*quantize, "-o", out, "--qat-epochs", "1", "--data", "rmd17:notamolecule"], "unknown rMD17 molecule"),
        ([*quantize, "-o", out, "--calib-data", root / "empty.npz"], "is empty (0 bytes)"),
        (["eval", checkpoint, "--data", root / "empty.npz"], "is empty (0 bytes)"),
        (["eval", checkpoint, "--data", root / "random.npz"], "is not an .npz file"),
        (["eval", checkpoint, "--data", root / "truncated.npz"], "is truncated or corrupted"),
        (["eval", checkpoint, "--data", root / "corrupt.npz"], "is truncated or corrupted"),
        (["eval", checkpoint, "--data", root / "dir.npz"], "is a directory"),
        (["eval", checkpoint, "--plot", plain / "p.png"], "is not a directory"),
        (["md", checkpoint, "--trajectory", plain / "t.traj"], "is not a directory"),
        (["md", checkpoint, "--trajectory", root / "folder"], "is a directory"),
        (["train", "-o", root / "folder", "--epochs", "1"], "is a directory"),
        (["eval", root / "folder"], "is a directory"),
        (["eval", root / "folder.safetensors"], "is a directory"),
        (["inspect", checkpoint], "is a PyTorch checkpoint"),
        (["eval", root / "pickled.pt"], "NotAllowlisted"),
    ]


def test_every_bad_input_gives_one_error_line_and_leaves_no_file(cli, tiny_checkpoint, tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("bad input found only after calibration")

    monkeypatch.setattr("gaqtool.workflow.quantize_loaded", no_work)
    for args, message in _bad_inputs(tmp_path, tiny_checkpoint):
        before = _files(tmp_path)
        result = cli(*args)
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert result.exit_code not in (0, None), (args, result.output)
        assert len(errors) == 1 and message in errors[0], (args, result.output)
        assert "Traceback" not in result.output and "\x1b" not in result.output, (args, result.output)
        assert _files(tmp_path) == before, (args, _files(tmp_path) - before)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_directory_is_refused_before_any_work(cli, tiny_checkpoint, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = cli("quantize", tiny_checkpoint, *SMALL, "-o", locked / "q.safetensors")
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 1 and "cannot be written" in result.stderr
    assert list(locked.iterdir()) == []


def test_a_report_that_cannot_be_written_leaves_no_model_file(tmp_path):
    """All or nothing (the directory was fine when checked, then the report failed)."""
    from gaqtool.cli.quantize import _write_outputs

    (tmp_path / "plain").write_text("x")
    output = tmp_path / "q.safetensors"

    def write_model(path: Path) -> dict:
        path.write_bytes(b"model")
        return {"seconds": {}}

    with pytest.raises(OSError):
        _write_outputs(output, tmp_path / "plain" / "r.json", write_model, 0.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]
    output.write_bytes(b"older model")
    with pytest.raises(OSError):
        _write_outputs(output, tmp_path / "plain" / "r.json", write_model, 0.0)
    assert output.read_bytes() == b"older model"  # untouched
    report = _write_outputs(output, tmp_path / "r.json", write_model, 0.0)
    assert output.read_bytes() == b"model" and report["output"] == str(output)
    assert json.loads((tmp_path / "r.json").read_text())["output"] == str(output)


def test_ctrl_c_exits_130_with_one_line(cli, tiny_checkpoint, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gaqtool.workflow.quantize_loaded", interrupted)
    result = cli("quantize", tiny_checkpoint, *SMALL, "-o", tmp_path / "q.safetensors")
    assert result.exit_code == 130
    assert [line for line in result.output.splitlines() if line.startswith("error:")] == ["error: interrupted (Ctrl-C)"]
    assert "Traceback" not in result.output and list(tmp_path.glob("*q.safetensors*")) == []


def test_an_interrupted_md_keeps_its_trajectory_and_shows_the_steps_done(cli, tiny_checkpoint, tmp_path, monkeypatch):
    import ase.io

    import gaqtool.md

    checks = {"calls": 0}
    original = gaqtool.md.blowup_reason

    def ctrl_c_at_step_5(*args, **kwargs):
        checks["calls"] += 1
        if checks["calls"] == 6:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(gaqtool.md, "blowup_reason", ctrl_c_at_step_5)
    trajectory = tmp_path / "run.traj"
    result = cli("md", tiny_checkpoint, "--steps", "20", "--log-every", "2", "--trajectory", trajectory,
                 "--threads", "1")
    assert result.exit_code == 130, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: interrupted (Ctrl-C) at step 5 of model [1]; the table shows the steps done"]
    assert any(line.startswith("│ steps run") and "5/20" in line for line in result.stdout.splitlines())
    assert len(ase.io.read(trajectory, index=":")) == 3  # steps 0, 2, 4
    assert "Traceback" not in result.output


def test_results_on_stdout_logs_on_stderr_and_reports_say_what_is_true(cli, tiny_checkpoint, tmp_path):
    out, report = tmp_path / "q.safetensors", tmp_path / "r.json"
    small_calibration = tmp_path / "three.npz"
    data = dict(np.load(sample_path("train")))
    np.savez(small_calibration, **{k: v[:3] if v.ndim and len(v) > 21 else v for k, v in data.items()})
    result = cli("quantize", tiny_checkpoint, "-o", out, "--report", report, "--calib-data", small_calibration,
                 "--calib-frames", "10", "--eval-frames", "2", "--lee-frames", "1000", "--lee-rotations", "1",
                 "--threads", "1")
    assert result.exit_code == 0, result.output
    assert "force MAE" in result.stdout and "force MAE" not in result.stderr  # the report: a result
    assert f"wrote {out}" in result.stderr and "calibration:" in result.stderr  # logs
    assert "warning: --calib-frames 10: the calibration data has 3; using 3" in result.stderr
    assert "warning: --lee-frames 1000: the evaluation set has 2; using 2" in result.stderr
    saved = json.loads(report.read_text())
    assert saved["calibration"]["frames"] == 3 and "3 frames" in saved["calibration"]["data"]
    assert saved["lee"]["fp32"]["num_frames"] == 2
    text = " ".join(result.stdout.split())
    assert "FP32 parameters of modules without a quantization handler: layers.0.log_temperature, " \
           "layers.1.log_temperature." in text  # by name: the layers themselves are quantized
    assert "force mode ste: forces are -dE/dx straight through the activation rounding" in text
    assert "gaqtool md and GAQCalculator use conservative forces" in text
    inspected = cli("inspect", out)
    assert inspected.exit_code == 0 and inspected.stderr == "" and "gaqtool format 1" in inspected.stdout
    as_json = cli("inspect", out, "--json")
    assert json.loads(as_json.stdout)["data"]["path"] == str(out)


def test_data_of_another_molecule_and_clamped_counts_are_warned_about(cli, tiny_checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    ethanol = tmp_path / "ethanol.npz"
    np.savez(ethanol, nuclear_charges=np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]), coords=rng.normal(size=(3, 9, 3)) * 1.5,
             energies=np.zeros(3), forces=np.zeros((3, 9, 3)))
    result = cli("eval", tiny_checkpoint, "--data", ethanol, "--frames", "50", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert f"warning: --frames 50: {ethanol} has 3; using 3" in result.stderr
    assert "warning: 3 of 3 frames are not aspirin (C9H8O4)" in result.stderr
    same = cli("eval", tiny_checkpoint, "--frames", "2", "--threads", "1")
    assert "warning" not in same.stderr


def test_elements_absent_from_calibration_are_warned_about(cli, tiny_checkpoint, tmp_path):
    """Calibrated on frames without oxygen, evaluated on aspirin: quantize and eval both say so."""
    data = dict(np.load(sample_path("train")))
    keep = data["nuclear_charges"] != 8
    no_oxygen = tmp_path / "no_oxygen.npz"
    np.savez(no_oxygen, nuclear_charges=data["nuclear_charges"][keep], coords=data["coords"][:3][:, keep],
             energies=data["energies"][:3], forces=data["forces"][:3][:, keep])
    out = tmp_path / "q.safetensors"
    result = cli("quantize", tiny_checkpoint, "-o", out, "--calib-data", no_oxygen, "--eval-frames", "2",
                 "--lee-frames", "1", "--lee-rotations", "1", "--threads", "1")
    assert result.exit_code == 0, result.output
    warning = "2 of 2 structures hold elements absent from the calibration structures (O)"
    assert f"warning: evaluation data: {warning}" in " ".join(result.stderr.split())
    evaluated = cli("eval", out, "--frames", "2", "--threads", "1")
    assert evaluated.exit_code == 0 and warning in " ".join(evaluated.stderr.split())
    lee = cli("lee-check", out, "--frames", "1", "--rotations", "1", "--threads", "1")
    assert lee.exit_code == 0 and "1 of 1 structures hold elements absent" in " ".join(lee.stderr.split())
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)   # one warning line, not the calculator's too
        md = cli("md", out, "--steps", "2", "--log-every", "1", "--threads", "1")
    assert md.exit_code == 0 and "1 of 1 structures hold elements absent" in " ".join(md.stderr.split())
    covered = cli("eval", out, "--data", no_oxygen, "--frames", "2", "--threads", "1")
    assert "absent from the calibration" not in covered.stderr
    inspected = cli("inspect", out)
    assert "calibration: 3 structures" in inspected.stdout and "elements H, C\n" in inspected.stdout


def test_brackets_in_messages_are_printed_not_taken_for_markup(cli, tiny_checkpoint, tmp_path):
    """Paths and hints such as pip install "gaqtool[sevenn]" keep their brackets (rich markup)."""
    missing = tmp_path / "run[1]" / "frames.extxyz"
    result = cli("eval", tiny_checkpoint, "--data", missing)
    assert result.exit_code == 1 and f"{missing}: data file not found" in " ".join(result.stderr.split())
    from gaqtool.backends.sevenn import INSTALL_HINT
    from gaqtool.cli.app import _print_error
    from gaqtool.errors import InputError

    with contextlib.redirect_stderr(io.StringIO()) as captured:
        _print_error(InputError("the SevenNet backend needs the sevenn package", hint=INSTALL_HINT), False)
    assert 'pip install "gaqtool[sevenn]"' in captured.getvalue()


def test_same_inputs_give_the_same_bytes_and_the_report_fits_80_columns(tiny_checkpoint, tmp_path):
    """Two runs of the real command line (separate processes)."""
    env = dict(os.environ, COLUMNS="80", PYTHONPATH=str(SRC))
    digests = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        done = subprocess.run([sys.executable, "-m", "gaqtool", "quantize", str(tiny_checkpoint), "-o", str(out), *SMALL],
                              capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        lines = (done.stdout + done.stderr).splitlines()
        assert max(len(line) for line in lines) <= 80
        assert not any("…" in line for line in done.stdout.splitlines())  # no number cut short
    assert digests[0] == digests[1]
    from gaqtool.io.safetensors_io import read_header

    assert "seconds" not in read_header(tmp_path / "a.safetensors").report


def test_bench_of_a_quantized_file_alone_uses_its_recorded_parent(cli, tiny_checkpoint, tmp_path):
    out = tmp_path / "q.safetensors"
    assert cli("quantize", tiny_checkpoint, "-o", out, *SMALL).exit_code == 0
    result = cli("bench", out, "--config", "fp32", "--repeats", "1", "--warmup", "0", "--no-memory",
                 "--batch-size", "2", "--cluster-molecules", "2", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    assert data["fp32_model"] == str(tiny_checkpoint) and any(str(out) in note for note in data["quantized"])
    assert "SHA-256 as recorded" in result.stderr
    orphan = tmp_path / "elsewhere"
    orphan.mkdir()
    (orphan / "q.safetensors").write_bytes(out.read_bytes())
    tiny_checkpoint.unlink()
    missing = cli("bench", orphan / "q.safetensors", "--threads", "1")
    assert missing.exit_code == 1 and "needs its FP32 parent" in missing.stderr
    assert "the embedded model is " in missing.stderr and "aspirin_fp32.pt" in missing.stderr


def test_tables_and_progress_bars_fit_80_columns(cli, tiny_checkpoint, tmp_path, monkeypatch):
    import io

    from rich.console import Console

    import gaqtool.cli.console as console_module

    out = tmp_path / "q.safetensors"
    assert cli("quantize", tiny_checkpoint, "-o", out, *SMALL).exit_code == 0
    for stream in (console_module.console, console_module.log):  # as COLUMNS=80 at start-up would
        monkeypatch.setattr(stream, "_width", 80)
    runs = [("eval", out, "--frames", "2", "--worst", "2"),
            ("lee-check", tiny_checkpoint, out, "--frames", "1", "--rotations", "1", "--localize"),
            ("md", tiny_checkpoint, out, "--steps", "2"),
            ("inspect", out),
            ("bench", tiny_checkpoint, out, "--config", "fake-quant", "--repeats", "1", "--warmup", "0",
             "--no-memory", "--batch-size", "2", "--cluster-molecules", "2")]
    for args in runs:
        result = cli(*args, *(["--threads", "1"] if args[0] != "inspect" else []))
        assert result.exit_code == 0, (args, result.output)
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, (args, max(lines, key=len))
        assert not [line for line in lines if "…" in line and "sha256" not in line], args
    screen = io.StringIO()
    monkeypatch.setattr(console_module, "log", Console(file=screen, width=80, force_terminal=True, color_system=None))
    with console_module.progress(transient=False) as bar:
        task = bar.add_task("[1] a_long_model_file_name_w4a8.safetensors", total=2000,
                            info="gaq w4a8, conservative forces")
        bar.update(task, advance=196)
    final = screen.getvalue().split("\r")[-1].splitlines()
    assert any("196/2000" in line for line in final)
    assert max(len(line.replace("\x1b[2K", "").replace("\x1b[?25h", "").replace("\x1b[1A", ""))
               for line in final) <= 80


def test_progress_bars_are_off_under_ci_and_json(monkeypatch):
    from rich.console import Console

    import gaqtool.cli.console as console_module

    monkeypatch.setattr(console_module, "log", Console(file=io.StringIO(), force_terminal=True))
    assert console_module.progress_enabled()
    assert not console_module.progress_enabled(json_mode=True)
    monkeypatch.setenv("CI", "true")
    assert not console_module.progress_enabled()
