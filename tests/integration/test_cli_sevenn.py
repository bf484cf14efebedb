"""eval, lee-check, md and inspect on SevenNet-0 and a quantized SevenNet-0 file, with periodic
crystals: frames without labels are compared with the FP32 parent the file records (teacher
mode), stress is evaluated, MD keeps the cell, and user errors are one line.

The quantized file is made once per module by ``gaqtool quantize`` itself (weight-only W8, nearest
rounding, two 8-atom cells), so the parent is found from what quantize really records.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("sevenn")

ase_io = pytest.importorskip("ase.io")
from ase.build import bulk  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

FAST = ("--threads", "1")


def _crystals():
    """Two rattled 8-atom cells (Si diamond, NaCl rocksalt)."""
    silicon = bulk("Si", "diamond", a=5.43, cubic=True)
    salt = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    silicon.rattle(0.05, seed=1)
    salt.rattle(0.05, seed=2)
    return [silicon, salt]


@pytest.fixture(scope="module")
def sevenn_files(tmp_path_factory):
    """A quantized SevenNet-0 file, an unlabelled crystal file, the same crystals labelled with
    the FP32 parent's energy, forces and stress, and a structure holding oganesson."""
    import torch

    from gaqtool.ase import GAQCalculator
    from gaqtool.cli.app import main

    torch.set_num_threads(1)
    directory = tmp_path_factory.mktemp("sevenn")
    crystals = _crystals()
    unlabelled = directory / "crystals.extxyz"
    ase_io.write(str(unlabelled), crystals)
    quantized = directory / "7net0_w8.safetensors"
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr("sys.argv", ["gaqtool", "quantize", "sevenn:7net-0", "--bits", "w8",
                                     "--method", "weight-only", "--weight-rounding", "nearest",
                                     "--calib-data", str(unlabelled), "--eval-data", str(unlabelled),
                                     "--calib-frames", "2", "--eval-frames", "2", "--lee-frames", "1",
                                     "--lee-rotations", "1", "-o", str(quantized), "--json", *FAST])
    with pytest.raises(SystemExit) as exit_info:
        main()
    monkeypatch.undo()
    assert exit_info.value.code in (0, None)

    calculator = GAQCalculator("sevenn:7net-0")
    labelled_frames = []
    for atoms in crystals:
        atoms = atoms.copy()
        atoms.calc = calculator
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces, stress=stress)
        labelled_frames.append(atoms)
    labelled = directory / "labelled.extxyz"
    ase_io.write(str(labelled), labelled_frames)
    alien = crystals[0].copy()
    alien.numbers[0] = 118  # Og: not among SevenNet-0's 89 elements
    oganesson = directory / "og.extxyz"
    ase_io.write(str(oganesson), [alien])
    silicon = directory / "si8.extxyz"
    ase_io.write(str(silicon), [bulk("Si", "diamond", a=5.43, cubic=True)])
    return {"dir": directory, "quantized": quantized, "unlabelled": unlabelled, "labelled": labelled,
            "og": oganesson, "si": silicon}


def _json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["data"]


def _finite(scope: dict, *keys: str) -> None:
    for key in keys:
        assert np.isfinite(scope[key]), (key, scope)


def test_eval_unlabelled_crystals_against_the_recorded_fp32_parent(cli, sevenn_files):
    teacher = _json(cli("eval", sevenn_files["quantized"], "--data", sevenn_files["unlabelled"],
                        "--json", *FAST))
    assert teacher["metrics"]["num_labelled"] == 0
    assert teacher["reference"] == {"labels": [], "fp32_parent": [0, 1], "none": []}
    assert teacher["teacher"]["parent"]["name"] == "sevenn:7net-0"
    assert any("FP32 parent sevenn:7net-0" in note for note in teacher["notes"])
    deviation = teacher["teacher"]["metrics"]
    _finite(deviation, "energy_mae_mev", "force_mae_mev_a", "stress_mae_mev_a3")
    assert 0 < deviation["force_mae_mev_a"] < 100  # W8 weights: close to, not equal to, FP32
    # the same crystals labelled with the FP32 parent's values give the same errors: teacher
    # mode really compares with sevenn:7net-0
    labelled = _json(cli("eval", sevenn_files["quantized"], "--data", sevenn_files["labelled"],
                         "--json", *FAST))
    assert labelled["teacher"] is None and labelled["metrics"]["num_labelled"] == 2
    assert labelled["metrics"]["force_mae_mev_a"] == pytest.approx(deviation["force_mae_mev_a"], rel=1e-3)
    assert labelled["metrics"]["stress_mae_mev_a3"] == pytest.approx(deviation["stress_mae_mev_a3"],
                                                                     rel=1e-2, abs=1e-4)


def test_eval_labelled_crystals_shows_stress_within_80_columns(cli, sevenn_files, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    result = cli("eval", "sevenn:7net-0", "--data", sevenn_files["labelled"], "--worst", "2", *FAST)
    assert result.exit_code == 0, result.output
    assert "vs labels, 2 frames" in result.stdout and "stress (meV/A^3)" in result.stdout
    assert "compared with labels: frames 0-1 (2 crystals)" in result.stdout
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_lee_check_finds_the_fp32_floor_of_a_quantized_sevenn_file(cli, sevenn_files):
    data = _json(cli("lee-check", sevenn_files["quantized"], "--data", sevenn_files["unlabelled"],
                     "--frames", "1", "--rotations", "1", "--json", *FAST))
    floor, quantized = data["rows"]
    assert floor["role"] == "fp32 floor" and floor["name"] == "sevenn:7net-0"
    assert quantized["parent"] == floor["path"]
    assert floor["lee"]["force_mean_mev_a"] < 0.1  # float32 rounding of a rotated crystal
    assert quantized["ratio_to_floor"] is not None and np.isfinite(quantized["ratio_to_floor"])


def test_md_of_a_periodic_crystal_keeps_the_cell(cli, sevenn_files):
    trajectory = sevenn_files["dir"] / "si.traj"
    data = _json(cli("md", sevenn_files["quantized"], "--structure", sevenn_files["si"], "--steps", "4",
                     "--log-every", "2", "--trajectory", trajectory, "--json", *FAST))
    assert data["periodic"] and data["num_atoms"] == 8
    np.testing.assert_allclose(data["cell"], np.eye(3) * 5.43)
    snapshots = ase_io.read(str(trajectory), index=":")
    assert len(snapshots) == 3 and all(atoms.pbc.all() for atoms in snapshots)
    np.testing.assert_allclose(snapshots[-1].cell[:], np.eye(3) * 5.43)  # NVE at fixed cell
    assert snapshots[-1].get_stress().shape == (6,)
    assert not np.allclose(snapshots[-1].positions, snapshots[0].positions)
    summary = data["runs"][0]["summary"]
    assert summary["steps_done"] == 4 and not summary["blew_up"]
    assert abs(summary["max_abs_energy_deviation_mev_atom"]) < 1.0
    assert set(data["runs"][0]["series"]) >= {"time_ps", "total_energy_ev", "temperature_k"}


def test_inspect_names_the_sevenn_source(cli, sevenn_files):
    data = _json(cli("inspect", sevenn_files["quantized"], "--json"))
    assert data["model"]["architecture"] == "sevenn" and data["model"]["molecule"] is None
    assert data["model"]["source"]["name"] == "sevenn:7net-0"
    human = cli("inspect", sevenn_files["quantized"], "--no-tensors")
    assert human.exit_code == 0
    assert "model sevenn (SevenNet-0)" in human.stdout and "quantized from sevenn:7net-0" in human.stdout
    assert "int8 x" in human.stdout  # per-module weight bits


@pytest.mark.parametrize("case", ["unknown name", "modal missing", "element", "rmd17"])
def test_sevenn_user_errors_are_one_line(cli, sevenn_files, monkeypatch, case):
    monkeypatch.delenv("GAQTOOL_DEBUG", raising=False)
    args, message = {
        "unknown name": (["eval", "sevenn:nope"], "unknown SevenNet model 'nope'"),
        "modal missing": (["lee-check", "sevenn:7net-mf-0"], "needs --modal"),
        "element": (["eval", sevenn_files["quantized"], "--data", sevenn_files["og"]], "Og (Z=118)"),
        "rmd17": (["md", "sevenn:7net-0", "--data", "rmd17", "--steps", "1"], "no molecule given"),
    }[case]
    result = cli(*args, *FAST)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output
