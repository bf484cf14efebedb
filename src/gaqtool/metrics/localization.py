"""Which module breaks equivariance: per-module equivariance errors from forward hooks.

Every irreps-typed module (one with an ``irreps_out``: e3nn ``o3.Linear``, ``Gate``,
``ChannelwiseConvolution``, ``EquivariantAttentionLayer``, ``QuantizedModule`` wrappers of them,
...) is hooked. The model runs on frames x and on rotated frames Rx (Haar rotations from
:func:`gaqtool.metrics.equivariance.haar_rotations`, same seed -> same rotations as the LEE),
with the *same* edge list, and for each module

    output_error = ||out(Rx) - D_out(R) out(x)|| / ||out(x)||

(Frobenius norms over all frames, rotations and calls; ``out`` is ``(..., irreps_out.dim)`` in
e3nn's ``mul_ir`` layout, ``D_out = irreps_out.D_from_matrix(R)``). Errors propagate, so each
module's input is measured the same way with ``irreps_in`` (``irreps_in1``/``irreps_in2`` or
``irreps_sh`` for a second input) and

    introduced_error = output_error - max(input errors)

ranks the culprit: the module that *adds* the most symmetry breaking. ``QuantizedModule``
wrappers are measured as a whole (their input quantizers included); their ``.inner`` module is
not listed separately.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np
import torch
from e3nn import o3
from torch import nn

from gaqtool.data.frames import Frames
from gaqtool.data.graph import Batch, make_batch
from gaqtool.metrics.equivariance import haar_rotations
from gaqtool.quant.modules import QuantizedModule

__all__ = ["irreps_modules", "localize_equivariance", "rotate_batch"]

_TINY = 1e-30


def _kind(module: nn.Module) -> str:
    if isinstance(module, QuantizedModule):
        return f"quantized {module.kind}"
    name = type(module).__name__
    return f"o3.{name}" if type(module).__module__.startswith("e3nn.o3") else name


def irreps_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every module with an ``o3.Irreps`` ``irreps_out``, in model order.

    The ``inner`` module of a ``QuantizedModule`` is left out (its wrapper stands for it).
    """
    skipped = {id(m.inner) for m in model.modules() if isinstance(m, QuantizedModule)}
    return [(path, module) for path, module in model.named_modules()
            if isinstance(getattr(module, "irreps_out", None), o3.Irreps) and id(module) not in skipped]


def _input_irreps(module: nn.Module) -> list[o3.Irreps | str | None]:
    """Irreps of positional inputs 0 and 1 (None: not measured; 'cartesian': rotated by R)."""
    inner = module.inner if isinstance(module, QuantizedModule) else module
    if isinstance(inner, o3.SphericalHarmonics):
        return ["cartesian"]  # raw xyz edge vectors: rotate with R itself in any e3nn version
    first = getattr(module, "irreps_in", None) or getattr(module, "irreps_in1", None)
    second = getattr(module, "irreps_in2", None) or getattr(module, "irreps_sh", None)
    return [ir if isinstance(ir, o3.Irreps) else None for ir in (first, second)]


def rotate_batch(batch: Batch, rotation: torch.Tensor) -> Batch:
    """The batch with every structure rotated about its centroid, lattice vectors (rows) too;
    same atoms, same edge list and cell offsets.

    rotation: (3, 3) float rotation matrix (cartesian xyz).
    """
    counts = batch.num_atoms_per_molecule.to(batch.positions.dtype).unsqueeze(-1)  # (M, 1)
    centroid = torch.zeros(batch.num_molecules, 3, dtype=batch.positions.dtype).index_add(
        0, batch.molecule_index, batch.positions) / counts
    center = centroid.index_select(0, batch.molecule_index)  # (n, 3)
    positions = (batch.positions - center) @ rotation.to(batch.positions.dtype).T + center
    cell = None if batch.cell is None else batch.cell @ rotation.to(batch.cell.dtype).T
    return replace(batch, positions=positions, cell=cell)


class _Recorder:
    """Hooks that store features on the reference pass and accumulate errors on rotated passes.

    For each (path, slot) with slot 'out' or 'in0'/'in1': squared error and squared reference
    norm summed over calls, batches and rotations.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]]):
        self.modules = modules
        self.reference: dict[tuple[str, str, int], torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.sq_error: dict[tuple[str, str], float] = {}
        self.sq_norm: dict[tuple[str, str], float] = {}
        self.rotation: torch.Tensor | None = None  # None: reference pass
        self._d_cache: dict[tuple[str, int], torch.Tensor] = {}
        self._rotation_id = 0
        self.handles: list[Any] = []

    def install(self) -> None:
        for path, module in self.modules:
            irreps_in = _input_irreps(module)
            self.handles.append(module.register_forward_pre_hook(self._pre_hook(path, irreps_in)))
            self.handles.append(module.register_forward_hook(self._post_hook(path, module.irreps_out)))

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def start_pass(self, rotation: torch.Tensor | None) -> None:
        self.rotation = rotation
        self._rotation_id += 1
        self.calls = {}

    def _transform(self, irreps: o3.Irreps | str, x: torch.Tensor) -> torch.Tensor:
        """D(R) x for x (..., irreps.dim) in mul_ir layout (or R x for cartesian vectors)."""
        key = (str(irreps), self._rotation_id)
        if key not in self._d_cache:
            rot = self.rotation.to(torch.float64)
            matrix = rot if irreps == "cartesian" else irreps.D_from_matrix(rot)
            self._d_cache = {k: v for k, v in self._d_cache.items() if k[1] == self._rotation_id}
            self._d_cache[key] = matrix
        return x @ self._d_cache[key].to(x.dtype).T

    def _record(self, path: str, slot: str, call: int, irreps, value) -> None:
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            return
        dim = 3 if irreps == "cartesian" else irreps.dim
        if value.shape[-1] != dim:
            return
        key = (path, slot, call)
        if self.rotation is None:
            self.reference[key] = value.detach().clone()
            return
        ref = self.reference.get(key)
        if ref is None or ref.shape != value.shape:
            return
        expected = self._transform(irreps, ref.double())
        diff = value.detach().double() - expected
        acc = (path, slot)
        self.sq_error[acc] = self.sq_error.get(acc, 0.0) + float((diff * diff).sum())
        self.sq_norm[acc] = self.sq_norm.get(acc, 0.0) + float((ref.double() ** 2).sum())

    def _pre_hook(self, path: str, irreps_in: list) -> Callable:
        def hook(module, args):
            call = self.calls.get(path, 0)
            for i, irreps in enumerate(irreps_in):
                if irreps is not None and i < len(args):
                    self._record(path, f"in{i}", call, irreps, args[i])
        return hook

    def _post_hook(self, path: str, irreps_out: o3.Irreps) -> Callable:
        def hook(module, args, output):
            call = self.calls.get(path, 0)
            self._record(path, "out", call, irreps_out, output)
            self.calls[path] = call + 1
        return hook

    def relative(self, path: str, slot: str) -> float | None:
        key = (path, slot)
        if key not in self.sq_error:
            return None
        return float(np.sqrt(self.sq_error[key] / max(self.sq_norm[key], _TINY)))


@torch.no_grad()
def localize_equivariance(model: nn.Module, frames: Frames, num_rotations: int = 4, seed: int = 0,
                          batch_size: int = 16, on_progress: Callable[[int], None] | None = None
                          ) -> list[dict[str, Any]]:
    """Per-module equivariance errors of ``model`` on ``frames``, worst culprit first.

    Returns one dict per irreps-typed module, sorted by ``introduced_error`` (descending):
    path, kind, irreps_out, output_error, input_error (None if no input could be measured),
    introduced_error (= output_error - input_error, or output_error). Errors are relative
    (dimensionless). ``on_progress(1)`` after each rotated pass (``num_rotations`` per batch of
    ``batch_size`` frames).
    """
    modules = irreps_modules(model)
    recorder = _Recorder(modules)
    rotations = torch.from_numpy(haar_rotations(num_rotations, seed))  # (K, 3, 3) float64
    cutoff = float(model.cutoff)
    recorder.install()
    try:
        for start in range(0, len(frames), batch_size):
            batch = make_batch(frames, range(start, min(start + batch_size, len(frames))), cutoff)
            recorder.reference.clear()
            recorder.start_pass(None)
            model(batch)
            for k, rotation in enumerate(rotations):
                recorder.start_pass(rotation)
                model(rotate_batch(batch, rotation))
                if on_progress:
                    on_progress(1)
    finally:
        recorder.remove()
        recorder.reference.clear()

    rows = []
    for path, module in modules:
        output_error = recorder.relative(path, "out")
        if output_error is None:
            continue
        inputs = [e for e in (recorder.relative(path, "in0"), recorder.relative(path, "in1"))
                  if e is not None]
        input_error = max(inputs) if inputs else None
        rows.append({
            "path": path, "kind": _kind(module), "irreps_out": str(module.irreps_out),
            "output_error": output_error, "input_error": input_error,
            "introduced_error": output_error - (input_error or 0.0),
        })
    rows.sort(key=lambda r: r["introduced_error"], reverse=True)
    return rows
