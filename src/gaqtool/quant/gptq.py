"""GPTQ weight rounding: choose the integers of each layer so that the layer's outputs *and
their derivatives with respect to the atom positions* on calibration molecules move least.

For a weight matrix ``W (in, out)`` fed with input rows ``X (n, in)``, rounding to nearest
minimises ``|W - Q|^2``; GPTQ (Frantar et al., arXiv 2210.17323) minimises ``|X (W - Q)|^2`` by
rounding one input row of W at a time and pushing its rounding error onto the rows not yet
rounded, through the inverse of ``H = X^T X``. Forces are -dE/dx, so a potential also needs the
derivatives of the layer outputs right: ``dX/dx . (W - Q)``. We add those rows, measured by
central differences (float64) along random displacements of the atoms built from the unit
vectors to their neighbours, so that the displacements turn with the molecule and the result
does not depend on how the calibration molecules are oriented; the two objectives are mixed
with equal weight after normalising each to unit trace:

    H = (1 - TANGENT_WEIGHT) V / tr V + TANGENT_WEIGHT T / tr T,   V = X^T X,  T = dX^T dX

The scales (per output channel or group) are chosen first, exactly as for rounding to nearest,
so the stored format does not change.

Equivariance: for ``o3.Linear`` the rows of X are the 2l+1 components of every input irrep
block, so H is a sum over m of x_m x_m^T (rotation invariant), and the result is still one
scalar weight per path applied to whole irreps: weight quantization stays exactly equivariant.

All layers' H are collected in one sweep over the calibration batches of the model with its
weights rounded to nearest and activation rounding off, so each layer sees the inputs it gets
once the layers before it are quantized (in development probes this did clearly better than H
from the FP32 model's inputs, and as well as re-collecting every layer's inputs after rounding
the layers before it, sequential GPTQ, at 1/20 of the cost). Measured effect on forces:
``benchmarks/gptq_ablation.py`` and docs/studies-aspirin.md.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from gaqtool.data.frames import Frames
from gaqtool.data.graph import iterate_batches
from gaqtool.quant.apply import activation_quantizers
from gaqtool.quant.modules import QuantizedModule
from gaqtool.quant.primitives import quantize
from gaqtool.quant.weights import column_scales, matrix_views, row_groups

__all__ = ["gptq_round", "gptq_", "SUPPORTED_KINDS"]

# kinds whose weight matrices multiply their input rows directly (one H per input block)
SUPPORTED_KINDS = ("o3.Linear", "nn.Linear", "e3nn.FullyConnectedNet.layer")
DAMPENING = 0.01        # fraction of the mean diagonal of H added to its diagonal (as in GPTQ)
TANGENT_WEIGHT = 0.5    # share of the derivative rows in H (0 = plain GPTQ)
DIRECTIONS = 4          # random displacement directions per calibration batch
STEP = 1e-4             # central-difference step, Angstrom (float64)
BATCH_SIZE = 8          # molecules per calibration batch
SEED = 0                # of the random displacements


def gptq_round(weight: torch.Tensor, hessian: torch.Tensor, num_bits: int, group_size: int | None,
               clip_search: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ integers and scales for one matrix ``weight (in, out)`` given ``hessian (in, in)``.

    Returns (int8 values (in, out), float32 scales (groups * out,), groups row-major): the layout
    of ``quantize_parameter``, whose scales it reuses (static groups). Rows are rounded in order
    of decreasing ``H_ii`` ("act order"); rows with ``H_ii = 0`` (inputs never seen) are zeroed.
    """
    weight = weight.detach().double()
    rows, cols = weight.shape
    groups = row_groups(rows, group_size)
    scales = torch.stack([column_scales(weight[g].float(), num_bits, clip_search) for g in groups])
    row_scale = torch.empty(rows, cols, dtype=torch.float64)
    for g, scale in zip(groups, scales):
        row_scale[g] = scale.double()
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    work = weight.clone()
    work[dead] = 0.0
    order = torch.argsort(torch.diagonal(h), descending=True, stable=True)
    h, work, row_scale = h[order][:, order], work[order], row_scale[order]
    h += DAMPENING * torch.diagonal(h).mean() * torch.eye(rows, dtype=torch.float64)
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    zero = torch.zeros(cols, dtype=torch.int32)
    values = torch.empty(rows, cols, dtype=torch.int8)
    for i in range(rows):
        q = quantize(work[i].float(), row_scale[i].float(), zero, num_bits, symmetric=True)
        values[i] = q.to(torch.int8)
        error = (work[i] - q.double() * row_scale[i]) / upper[i, i]
        work[i + 1:] -= upper[i, i + 1:, None] * error[None, :]
    unordered = torch.empty_like(values)
    unordered[order] = values
    return unordered, scales.reshape(-1).float()


def _input_rows(kind: str, module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Input rows (n_rows, in) for each weight-matrix view of ``module`` (``matrix_views`` order)."""
    if kind == "o3.Linear":
        blocks = [x[..., sl].reshape(-1, mul, ir.dim).transpose(1, 2).reshape(-1, mul)
                  for (mul, ir), sl in zip(module.irreps_in, module.irreps_in.slices())]
        return [blocks[ins.i_in] for ins in module.instructions]
    return [x.reshape(-1, x.shape[-1])]


def _equivariant_displacement(batch, generator: torch.Generator) -> torch.Tensor:
    """Random displacement (n, 3) that rotates with the molecule: each atom moves along a random
    combination sum_j c_ij u_ij of the unit vectors to its neighbours (c_ij ~ N(0, 1) drawn per edge in
    index order), so the derivative rows, and GPTQ's result, do not depend on how the
    calibration molecules happen to be oriented."""
    weights = torch.randn(batch.edge_src.shape[0], generator=generator, dtype=torch.float64)
    bonds = batch.edge_vectors()
    bonds = bonds / bonds.norm(dim=1, keepdim=True).clamp_min(1e-12)
    step = torch.zeros_like(batch.positions).index_add(0, batch.edge_dst, weights[:, None] * bonds)
    return step / step.pow(2).mean().sqrt().clamp_min(1e-12)


def _unit_trace(h: torch.Tensor) -> torch.Tensor:
    trace = h.diagonal().sum()
    return h / trace if trace > 0 else h


class _InputRecorder:
    """Forward pre-hook keeping the input rows of every call (float64)."""

    def __init__(self, kind: str, module: nn.Module):
        self.kind, self.module = kind, module
        self.calls: list[list[torch.Tensor]] = []

    def __call__(self, _module, args):
        self.calls.append([r.double() for r in _input_rows(self.kind, self.module, args[0].detach())])


def _hessians(model: nn.Module, modules: list[tuple[str, nn.Module]], batches: list
              ) -> list[list[torch.Tensor] | None]:
    """H per weight view of each (kind, submodule of ``model``) (see the module docstring);
    None for a module the model never calls."""
    recorders = [_InputRecorder(kind, m) for kind, m in modules]
    handles = [m.register_forward_pre_hook(r) for (_, m), r in zip(modules, recorders)]
    values: list = [None] * len(modules)
    tangents: list = [None] * len(modules)

    def add(total, terms):
        return terms if total is None else [a + b for a, b in zip(total, terms)]

    generator = torch.Generator().manual_seed(SEED)
    try:
        for batch in batches:
            for r in recorders:
                r.calls.clear()
            model(batch)
            for k, r in enumerate(recorders):
                if r.calls:
                    values[k] = add(values[k], [x.t() @ x for x in r.calls[0]])
            for _ in range(DIRECTIONS):
                step = _equivariant_displacement(batch, generator)
                for r in recorders:
                    r.calls.clear()
                model(replace(batch, positions=batch.positions + STEP * step))
                model(replace(batch, positions=batch.positions - STEP * step))
                for k, r in enumerate(recorders):
                    if r.calls:
                        rows = [(a - b) / (2 * STEP) for a, b in zip(*r.calls)]
                        tangents[k] = add(tangents[k], [x.t() @ x for x in rows])
    finally:
        for handle in handles:
            handle.remove()
    return [None if vs is None else
            [(1 - TANGENT_WEIGHT) * _unit_trace(v) + TANGENT_WEIGHT * _unit_trace(t) for v, t in zip(vs, ts)]
            for vs, ts in zip(values, tangents)]


@torch.no_grad()
def gptq_(model: nn.Module, fp32: nn.Module, frames: Frames) -> list[str]:
    """Re-round, in place, the weights of every per-channel ``QuantizedModule`` of ``model`` of a
    supported kind by GPTQ on ``frames`` (calibration molecules), starting from the FP32 weights
    of ``fp32`` (same module paths). Other weights (embeddings, tensor products, per-tensor
    ``naive`` grids) keep rounding to nearest. Returns the module paths re-rounded.
    """
    work = copy.deepcopy(model).double().eval()  # float64: the derivative rows need it
    for quantizer in activation_quantizers(work):
        quantizer.mode = "off"
    originals = dict(fp32.named_parameters())
    targets = {path: m for path, m in model.named_modules()
               if isinstance(m, QuantizedModule) and m.kind in SUPPORTED_KINDS and m.weight_names
               and not m.per_tensor}
    batches = list(iterate_batches(frames, BATCH_SIZE, work.cutoff, dtype=torch.float64))
    all_hessians = _hessians(work, [(m.kind, work.get_submodule(p).inner) for p, m in targets.items()], batches)
    rounded = []
    for path, hessians in zip(targets, all_hessians):
        if hessians is None:  # never called on these molecules: nothing to fit, keep nearest
            continue
        rounded.append(path)
        wrapped = targets[path]
        for name in wrapped.weight_names:
            original = originals[f"{path}.{name}"].detach().float()
            values = torch.zeros(original.shape, dtype=torch.int8)
            scales = []
            views = zip(matrix_views(wrapped.inner, name, original),
                        matrix_views(wrapped.inner, name, values), hessians)
            for w, v, h in views:
                q, s = gptq_round(w, h, wrapped.weight_bits, wrapped.group_size, wrapped.clip_search)
                v.copy_(q)
                scales.append(s)
            wrapped.load_quantized_weight(name, values, torch.cat(scales))
    return rounded
