"""Physics of the reference potential: symmetries, conservative forces, smooth cutoff."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from e3nn import o3
from e3nn.util.test import assert_equivariant

from gaqtool.data.graph import make_batch
from gaqtool.models.convolution import ChannelwiseConvolution
from gaqtool.models.layers import EquivariantAttentionLayer
from gaqtool.potential import energy_and_forces
from tests.conftest import make_tiny_model


@pytest.fixture
def batch(test_frames):
    return make_batch(test_frames, range(3), cutoff=5.0)


def test_energy_invariant_forces_equivariant_under_rotation(tiny_model, batch):
    energies, forces = energy_and_forces(tiny_model, batch)
    for seed in range(3):
        torch.manual_seed(seed)
        rotation = o3.rand_matrix()
        rotated = replace(batch, positions=batch.positions @ rotation.T)
        e_rot, f_rot = energy_and_forces(tiny_model, rotated)
        assert torch.allclose(e_rot, energies, atol=1e-4, rtol=0)  # eV; float32 network
        assert torch.allclose(f_rot, forces @ rotation.T, atol=1e-4)
    assert forces.abs().mean() > 1e-3  # the check is not vacuous


def test_translation_and_permutation_invariance(tiny_model, test_frames):
    frames = test_frames.subset([0])
    batch = make_batch(frames, [0], cutoff=5.0)
    energies, forces = energy_and_forces(tiny_model, batch)
    shifted = replace(batch, positions=batch.positions + torch.tensor([3.0, -1.0, 2.0]))
    e_shift, f_shift = energy_and_forces(tiny_model, shifted)
    assert torch.allclose(e_shift, energies, atol=1e-4)
    assert torch.allclose(f_shift, forces, atol=1e-4)
    perm = torch.randperm(len(frames.numbers[0]), generator=torch.Generator().manual_seed(1))
    frames.numbers[0], frames.positions[0] = frames.numbers[0][perm.numpy()], frames.positions[0][perm.numpy()]
    frames.forces[0] = frames.forces[0][perm.numpy()]
    e_perm, f_perm = energy_and_forces(tiny_model, make_batch(frames, [0], cutoff=5.0))
    assert torch.allclose(e_perm, energies, atol=1e-4)
    assert torch.allclose(f_perm, forces[perm], atol=1e-4)


def test_forces_equal_finite_difference_gradient(test_frames):
    model = make_tiny_model(energy_shift={}).double()  # no -17600 eV offset: FD noise stays small
    batch = make_batch(test_frames, [0], cutoff=5.0, dtype=torch.float64)
    _, forces = energy_and_forces(model, batch)
    h = 1e-4
    for atom, axis in [(0, 0), (5, 1), (13, 2), (20, 0)]:
        plus, minus = batch.positions.clone(), batch.positions.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        e_plus = model(replace(batch, positions=plus))
        e_minus = model(replace(batch, positions=minus))
        numeric = float(-(e_plus - e_minus).detach() / (2 * h))
        assert numeric == pytest.approx(float(forces[atom, axis]), rel=1e-4, abs=1e-8)


def test_energy_is_smooth_when_an_atom_crosses_the_cutoff():
    model = make_tiny_model().double()
    numbers = torch.tensor([6, 8])
    energies = []
    for d in (4.999, 5.0005):  # just inside / outside the 5 A cutoff
        positions = torch.tensor([[0.0, 0.0, 0.0], [d, 0.0, 0.0]], dtype=torch.float64)
        from gaqtool.data.graph import Batch, radius_graph

        index = torch.zeros(2, dtype=torch.long)
        src, dst = radius_graph(positions, index, 5.0)
        energies.append(float(model(Batch(numbers, positions, index, 1, src, dst))))
    assert abs(energies[0] - energies[1]) < 1e-9


@pytest.fixture
def default_dtype(request):
    """Run a test under torch's default dtype ``request.param`` (e3nn builds rotations in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    yield request.param
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("default_dtype", [torch.float32, torch.float64], indirect=True)
def test_building_blocks_pass_assert_equivariant(default_dtype):
    dtype = default_dtype
    irreps = o3.Irreps("4x0e+4x1o+4x2e")
    sh = o3.Irreps.spherical_harmonics(2)
    conv = ChannelwiseConvolution(irreps, sh, {ir for _, ir in irreps}).to(dtype)
    src, dst = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])

    def run_conv(x, y, w):
        return conv(x, y, w, src, dst)

    weights = torch.randn(4, conv.channels, conv.num_paths, dtype=dtype)
    errors = assert_equivariant(
        run_conv, args_in=[torch.randn(3, irreps.dim, dtype=dtype), torch.randn(4, sh.dim, dtype=dtype), weights],
        irreps_in=[irreps, sh, None], irreps_out=[conv.irreps_out])
    assert max(float(v.max()) for v in errors.values()) < (1e-4 if dtype == torch.float32 else 1e-10)
    layer = EquivariantAttentionLayer(irreps, sh, 8, 16, 2, 4, "cosine").to(dtype)
    basis, env = torch.rand(4, 8, dtype=dtype), torch.rand(4, dtype=dtype)
    assert_equivariant(lambda x, y: layer(x, y, basis, env, src, dst),
                       args_in=[torch.randn(3, irreps.dim, dtype=dtype), torch.randn(4, sh.dim, dtype=dtype)],
                       irreps_in=[irreps, sh], irreps_out=[irreps])


def test_cosine_attention_logits_are_bounded():
    irreps = o3.Irreps("4x0e+4x1o")
    layer = EquivariantAttentionLayer(irreps, o3.Irreps.spherical_harmonics(1), 8, 16, 2, 4, "cosine")
    scalars = 1e4 * torch.randn(5, 4)
    keys = 1e4 * torch.randn(6, 8)
    src, dst = torch.tensor([0, 1, 2, 3, 4, 0]), torch.tensor([1, 2, 3, 4, 0, 2])
    logits = layer.attention_logits(scalars, keys, src, dst)
    assert float(logits.abs().max()) <= float(layer.log_temperature.exp().max()) + 1e-5
    dot = EquivariantAttentionLayer(irreps, o3.Irreps.spherical_harmonics(1), 8, 16, 2, 4, "dot")
    assert float(dot.attention_logits(scalars, keys, src, dst).abs().max()) > 1e3  # unbounded
