"""The SevenNet backend on the real pretrained weights shipped in the sevenn wheel: the FP32 path
against sevenn's own calculator, safe loading, derivatives on periodic cells, quantized files
that round-trip, and one-line errors for bad sources."""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from gaqtool.config import QuantConfig
from gaqtool.data.frames import Frames
from gaqtool.data.graph import make_batch
from gaqtool.data.universal import universal_frames
from gaqtool.errors import GaqtoolError, InputError, ModelLoadError
from gaqtool.io.loading import load_model
from gaqtool.io.safetensors_io import load_quantized, save_quantized
from gaqtool.potential import predict_batch
from gaqtool.workflow import quantize_loaded

pytest.importorskip("sevenn")
warnings.filterwarnings("ignore", module="sevenn")


@pytest.fixture(scope="module")
def sevennet():
    return load_model("sevenn:7net-0")


def _frames(atoms_list) -> Frames:
    return Frames([a.numbers.copy() for a in atoms_list], [a.positions.copy() for a in atoms_list],
                  np.full(len(atoms_list), np.nan), [np.zeros((len(a), 3)) for a in atoms_list],
                  cells=[np.array(a.cell[:]) for a in atoms_list], pbc=[a.pbc.copy() for a in atoms_list])


def _aspirin(test_frames) -> Atoms:
    return Atoms(numbers=test_frames.numbers[0], positions=test_frames.positions[0])


def _crystal() -> Atoms:
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell[:] @ np.array([[1.01, 0.01, 0.0], [0.01, 0.99, 0.0], [0.0, 0.0, 1.0]]),
                   scale_atoms=True)
    return atoms


def test_fp32_matches_sevenn_calculator_on_a_molecule_and_a_periodic_cell(sevennet, test_frames):
    from sevenn.calculator import SevenNetCalculator

    calculator = SevenNetCalculator("7net-0")
    for atoms in (_aspirin(test_frames), _crystal()):
        atoms.calc = calculator
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        prediction = predict_batch(sevennet.model, make_batch(_frames([atoms]), [0], sevennet.model.cutoff),
                                   stress=True)
        assert abs(float(prediction.energies[0]) - energy) / len(atoms) < 1e-5
        assert np.abs(prediction.forces.detach().numpy() - forces).max() < 1e-4
        if atoms.pbc.any():
            s = prediction.stress[0].detach().numpy()
            voigt = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
            assert np.abs(voigt - atoms.get_stress()).max() < 1e-5
            assert np.abs(voigt).max() > 1e-3  # the strained cell has a stress to compare


def test_safe_load_gives_sevenn_state_dict_and_refuses_other_pickles(sevennet, tmp_path):
    import sevenn._const as const
    import sevenn.util

    reference, _ = sevenn.util.model_from_checkpoint(const.SEVENNET_0_11Jul2024)
    ours = sevennet.model.net.state_dict()
    theirs = reference.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    payload = torch.load(const.SEVENNET_0_11Jul2024, weights_only=False, map_location="cpu")
    payload["config"]["note"] = argparse.Namespace(evil=True)  # not on any allowlist
    path = tmp_path / "tampered.pth"
    torch.save(payload, path)
    with pytest.raises(ModelLoadError, match="allowlist") as info:
        load_model(path)
    assert "--trust-pickle" in info.value.hint
    assert load_model(path, trust_pickle=True).model.cutoff == 5.0


def test_periodic_forces_and_stress_are_derivatives_of_the_energy(sevennet):
    """float64 copy of SevenNet-0 on a sheared, rattled NaCl cell: forces against central
    differences of the energy, stress against the derivative under a symmetric strain."""
    model = load_model("sevenn:7net-0").model.double()
    atoms = _crystal()

    def energy(positions: np.ndarray, cell: np.ndarray) -> float:
        frames = Frames([atoms.numbers], [positions], np.array([np.nan]), [np.zeros_like(positions)],
                        cells=[cell], pbc=[atoms.pbc.copy()])
        with torch.no_grad():
            return float(model(make_batch(frames, [0], model.cutoff, torch.float64))[0])

    batch = make_batch(_frames([atoms]), [0], model.cutoff, torch.float64)
    prediction = predict_batch(model, batch, stress=True)
    forces, stress = prediction.forces.detach().numpy(), prediction.stress[0].detach().numpy()
    h, cell, positions = 1e-4, np.array(atoms.cell[:]), atoms.positions.copy()
    for k, axis in ((0, 0), (3, 1), (6, 2)):
        plus, minus = positions.copy(), positions.copy()
        plus[k, axis] += h
        minus[k, axis] -= h
        assert -(energy(plus, cell) - energy(minus, cell)) / (2 * h) == pytest.approx(forces[k, axis], abs=1e-6)
    volume = abs(np.linalg.det(cell))
    for i, j in ((0, 0), (2, 2), (0, 1), (1, 2)):
        strain = np.zeros((3, 3))
        strain[i, j] = strain[j, i] = h
        e = [energy(positions @ (np.eye(3) + s), cell @ (np.eye(3) + s)) for s in (strain, -strain)]
        derivative = (e[0] - e[1]) / (2 * h) / volume / (1.0 if i == j else 2.0)
        assert derivative == pytest.approx(stress[i, j], abs=1e-7)
    assert np.abs(stress).max() > 1e-4


@pytest.mark.parametrize("bits", ["w4", "w4a8"])
def test_quantized_file_round_trips_exactly(sevennet, tmp_path, bits):
    calib = universal_frames("calib").subset([0, 5, 12, 17])
    config = QuantConfig.from_preset(bits, calib_frames=4, weight_rounding="nearest")
    quantized, plan = quantize_loaded(sevennet.model, config, calib)
    assert plan.entries["net.onehot_to_feature_x.linear"]["status"] == "fp32"  # by role
    assert "role 'species_embedding'" in plan.entries["net.onehot_to_feature_x.linear"]["reason"]
    path = save_quantized(tmp_path / "q.safetensors", quantized, config, plan, "0" * 64)
    loaded = load_quantized(path)
    test = universal_frames("test").subset([1, 9, 16])
    batch = make_batch(test, range(len(test)), sevennet.model.cutoff)
    before = predict_batch(quantized, batch, stress=True)
    after = predict_batch(loaded, batch, stress=True)
    assert torch.equal(before.energies, after.energies)
    assert torch.equal(before.forces, after.forces)
    assert torch.equal(before.stress, after.stress)
    fp32 = predict_batch(sevennet.model, batch, stress=True)
    assert not torch.equal(fp32.forces, after.forces)  # it is quantized
    assert path.stat().st_size < 0.2 * sevennet.path.stat().st_size


def test_bad_sources_give_one_line_errors(test_frames):
    with pytest.raises(ModelLoadError, match="unknown SevenNet model 'nope'") as info:
        load_model("sevenn:nope")
    assert "sevenn:7net-0" in info.value.hint
    with pytest.raises(InputError, match="needs --modal") as info:
        load_model("sevenn:7net-mf-0")
    assert "PBE" in info.value.hint
    with pytest.raises(InputError, match="unknown --modal"):
        load_model("sevenn:7net-mf-0", modal="HSE")
    with pytest.raises(InputError, match="one fidelity"):
        load_model("sevenn:7net-0", modal="PBE")


def test_an_element_the_model_lacks_is_named(sevennet):
    atoms = Atoms("OgH", positions=[[0, 0, 0], [1.5, 0, 0]])  # Og (Z=118): not in SevenNet-0's 89
    batch = make_batch(_frames([atoms]), [0], sevennet.model.cutoff)
    with pytest.raises(GaqtoolError, match=r"Og \(Z=118\)"):
        predict_batch(sevennet.model, batch)


def test_multi_fidelity_model_uses_the_chosen_modal(test_frames):
    atoms = _crystal()
    batch = make_batch(_frames([atoms]), [0], 5.0)
    pbe = load_model("sevenn:7net-mf-0", modal="PBE").model
    r2scan = load_model("sevenn:7net-mf-0", modal="R2SCAN").model
    e_pbe, e_r2scan = (float(m(batch)[0]) for m in (pbe, r2scan))
    assert abs(e_pbe - e_r2scan) > 1e-3  # the fidelities differ
    assert pbe.config["modal"] == "PBE"


@pytest.fixture(scope="module")
def sevennet_e3nn():
    return load_model("sevenn:7net-0", e3nn_convolution=True)


def test_fused_convolution_is_switched_in_and_equals_sevenns_e3nn_path(sevennet, sevennet_e3nn, test_frames):
    from sevenn.nn.convolution import IrrepsConvolution

    from gaqtool.backends.sevenn_convolution import FusedSevenNetConvolution

    fused, e3nn = sevennet.model, sevennet_e3nn.model
    names = [n for n, m in fused.net.named_children() if isinstance(m, FusedSevenNetConvolution)]
    assert len(names) == 5 and not any(isinstance(m, FusedSevenNetConvolution) for m in e3nn.modules())
    assert all(isinstance(getattr(e3nn.net, n), IrrepsConvolution) for n in names)
    assert fused.state_dict().keys() == e3nn.state_dict().keys()
    assert fused.module_roles() == e3nn.module_roles()
    for atoms in (_aspirin(test_frames), _crystal()):
        batch = make_batch(_frames([atoms]), [0], fused.cutoff)
        a, b = (predict_batch(m, batch, stress=True) for m in (fused, e3nn))
        assert abs(float(a.energies[0] - b.energies[0])) / len(atoms) < 1e-5
        assert (a.forces - b.forces).abs().max() < 1e-4
        assert (a.stress - b.stress).abs().max() < 1e-6


def test_quantization_finds_the_same_modules_with_the_fused_convolution(sevennet, sevennet_e3nn):
    """Same plan, calibration statistics and weights with the fused convolution as with e3nn's
    (calibration runs sevenn's gathered formulation, so observers see the same values)."""
    calib = universal_frames("calib").subset([5])
    config = QuantConfig.from_preset("w4a8", calib_frames=1, weight_rounding="nearest")
    (fused, plan), (e3nn, plan_e3nn) = (quantize_loaded(s.model, config, calib) for s in (sevennet, sevennet_e3nn))
    assert plan.entries.keys() == plan_e3nn.entries.keys()
    assert [e["status"] for e in plan.entries.values()] == [e["status"] for e in plan_e3nn.entries.values()]
    assert plan.entries["net.1_convolution.convolution"]["status"] == "quantized"  # its inputs (A8)
    assert plan.entries["net.1_convolution.weight_nn.layer0"]["status"] == "quantized"
    reference = e3nn.state_dict()
    assert fused.state_dict().keys() == reference.keys()
    for name, tensor in fused.state_dict().items():
        assert torch.allclose(tensor.float(), reference[name].float(), rtol=1e-4, atol=1e-6), name


def test_a_quantized_file_runs_the_same_with_either_convolution(sevennet, tmp_path):
    config = QuantConfig.from_preset("w4", weight_rounding="nearest")
    quantized, plan = quantize_loaded(sevennet.model, config, universal_frames("calib").subset([0]))
    path = save_quantized(tmp_path / "q.safetensors", quantized, config, plan, "0" * 64)
    test = universal_frames("test").subset([1, 9])
    batch = make_batch(test, range(len(test)), sevennet.model.cutoff)
    a, b = predict_batch(quantized, batch), predict_batch(load_quantized(path, e3nn_convolution=True), batch)
    assert ((a.energies - b.energies).abs() / batch.num_atoms_per_molecule).max() < 1e-5
    assert (a.forces - b.forces).abs().max() < 1e-4
    assert (a.forces - predict_batch(sevennet.model, batch).forces).abs().max() > 1e-3  # quantized


def test_bench_compares_with_sevenns_own_calculator_model(sevennet, test_frames):
    """One system, one repeat: sevenn's own model is the reference, gaqtool's FP32 runtime is
    within float32 noise of it, and the fused convolution's FLOPs and time are reported."""
    from gaqtool.cli.bench import run_benchmark, universal_systems

    systems = universal_systems(test_frames, sevennet.model.cutoff, 2)[:1]
    data = run_benchmark(sevennet.model, [], systems, ["sevenn", "fp32"], repeats=1, warmup=0,
                         memory=False, sevenn_source=(sevennet.path, None))
    rows = {r["config"]: r for r in data["results"]}
    assert rows["sevenn"]["status"] == rows["fp32"]["status"] == "ok"
    assert rows["fp32"]["reference"] == "sevenn"
    assert rows["fp32"]["max_abs_force_error_meV_per_A"] < 0.1
    assert rows["fp32"]["max_abs_energy_error_meV"] / 21 < 0.01
    assert data["ratios"]["fp32"]["1 aspirin"]["speedup"] > 0
    convolution = rows["fp32"]["convolution"]
    assert convolution["flops"] > 0 and convolution["seconds"] > 0
    assert "convolution" not in rows["sevenn"]


def test_training_gradients_through_forces_equal_e3nns(sevennet, sevennet_e3nn, test_frames):
    """d(force loss)/d(radial MLP weights) needs the convolution's second derivative (QAT)."""
    batch = make_batch(_frames([_aspirin(test_frames)]), [0], sevennet.model.cutoff)
    grads = []
    for loaded in (sevennet, sevennet_e3nn):
        model = loaded.model
        weight = model.net._modules["1_convolution"].weight_nn.layer0.weight
        forces = predict_batch(model, batch, create_graph=True).forces
        grads.append(torch.autograd.grad(forces.square().sum(), weight)[0])
    assert grads[1].abs().max() > 0
    assert (grads[0] - grads[1]).abs().max() < 1e-4 * grads[1].abs().max()
