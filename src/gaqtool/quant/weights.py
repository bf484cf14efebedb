"""Weight quantization of matrices ``W (in, out)``: symmetric integers, one scale per output
channel (or per group of input channels and output channel), or one scale per tensor.

Parameters of every supported module are seen as a list of such matrices that are *views* of
the parameter (``matrix_views``), so quantized values can be written back in place and an
integer tensor of the parameter's own shape can be built with the same views.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from gaqtool.quant.primitives import choose_qparams, dequantize, quantize

__all__ = ["matrix_views", "quantize_parameter", "dequantize_parameter", "scale_index_map",
           "column_scales", "row_groups", "to_storage_precision"]


def matrix_views(module: nn.Module, name: str, tensor: torch.Tensor) -> list[torch.Tensor]:
    """Views ``(in, out)`` of ``tensor`` (shaped like ``module.<name>``), one per weight matrix.

    o3.Linear: one [mul_in, mul_out] matrix per path; o3.TensorProduct: per instruction,
    [mul_1 * mul_2, mul_out] for 'uvw' (and [mul, ...] forms otherwise); nn.Linear [out, in]
    -> its transpose; nn.Embedding [num, dim] -> transpose (one scale per embedding row);
    e3nn FullyConnectedNet layers store [h_in, h_out] already.
    """
    if isinstance(module, o3.Linear):
        return [v for v in module.weight_views(weight=tensor)]
    if isinstance(module, o3.TensorProduct):
        views = []
        for view in module.weight_views(weight=tensor):
            views.append(view.reshape(-1, view.shape[-1]) if view.dim() > 1 else view.reshape(-1, 1))
        return views
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return [tensor.t()]
    if tensor.dim() == 2:  # e3nn.nn.FullyConnectedNet layer: [h_in, h_out]
        return [tensor]
    raise TypeError(f"no matrix layout known for {type(module).__name__}.{name}")


def to_storage_precision(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to float16 (how the file stores them), clamped to float16's normal range,
    so that weights quantized with them dequantize identically after saving and loading."""
    return scale.float().clamp(6.2e-5, 6.5e4).half().float()


def row_groups(rows: int, group_size: int | None) -> list[slice]:
    """Slices of the input rows that share a scale: all rows, or consecutive groups."""
    if group_size is None or group_size >= rows:
        return [slice(0, rows)]
    return [slice(s, min(s + group_size, rows)) for s in range(0, rows, group_size)]


# Clipping ratios tried by the MSE weight-scale search (fractions of each column's max |w|).
CLIP_RATIOS = torch.linspace(0.3, 1.0, 36)


def column_scales(block: torch.Tensor, num_bits: int, clip_search: bool) -> torch.Tensor:
    """Symmetric scale per column of ``block (rows, cols)``, float16-representable: from the
    column's max |w|, or (``clip_search``) from the clipped max that minimises the column's
    squared rounding error sum_rows (w - Q(w))^2 over :data:`CLIP_RATIOS`."""
    low, high = block.amin(0), block.amax(0)
    best_scale = to_storage_precision(choose_qparams(low, high, num_bits, symmetric=True)[0])
    if not clip_search:
        return best_scale
    zero = torch.zeros_like(best_scale, dtype=torch.int32)
    best_error = torch.full_like(best_scale, float("inf"))
    for ratio in CLIP_RATIOS.tolist():
        scale = to_storage_precision(choose_qparams(low * ratio, high * ratio, num_bits, symmetric=True)[0])
        error = ((dequantize(quantize(block, scale, zero, num_bits, symmetric=True), scale, zero)
                  - block) ** 2).sum(0)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_scale = torch.where(better, scale, best_scale)
    return best_scale


def quantize_parameter(module: nn.Module, name: str, num_bits: int, group_size: int | None,
                       per_tensor: bool, clip_search: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``module.<name>`` symmetrically; return (int8 values shaped like the parameter,
    flat float32 scales in view order: per view, groups x out, row-major; or one scale if
    ``per_tensor``). ``clip_search``: per-channel/group scales from the MSE-optimal clipping
    ratio instead of min-max (per-tensor scales are always min-max)."""
    weight = getattr(module, name).detach().float()
    values = torch.zeros(weight.shape, dtype=torch.int8)
    if per_tensor:
        scale, zero = choose_qparams(weight.min(), weight.max(), num_bits, symmetric=True)
        scale = to_storage_precision(scale)
        values.copy_(quantize(weight, scale, zero, num_bits, symmetric=True).to(torch.int8))
        return values, scale.reshape(1).float()
    scales = []
    for w, q in zip(matrix_views(module, name, weight), matrix_views(module, name, values)):
        for rows in row_groups(w.shape[0], group_size):
            block = w[rows]
            scale = column_scales(block, num_bits, clip_search)
            zero = torch.zeros_like(scale, dtype=torch.int32)
            q[rows] = quantize(block, scale, zero, num_bits, symmetric=True).to(torch.int8)
            scales.append(scale.float().reshape(-1))
    return values, torch.cat(scales) if scales else torch.zeros(0)


def dequantize_parameter(module: nn.Module, name: str, values: torch.Tensor, scales: torch.Tensor,
                         group_size: int | None, per_tensor: bool) -> torch.Tensor:
    """Float32 weights shaped like ``module.<name>`` from int values and flat scales."""
    out = torch.zeros(values.shape, dtype=torch.float32)
    if per_tensor:
        return out.copy_(values.float() * scales.reshape(()))
    offset = 0
    for q, w in zip(matrix_views(module, name, values), matrix_views(module, name, out)):
        for rows in row_groups(q.shape[0], group_size):
            count = q.shape[1]
            scale = scales[offset:offset + count]
            w[rows] = dequantize(q[rows].to(torch.int32), scale, torch.zeros_like(scale, dtype=torch.int32))
            offset += count
    if offset != scales.numel():
        raise ValueError(f"{scales.numel()} scales for {offset} needed")
    return out



def scale_index_map(module: nn.Module, name: str, group_size: int | None, per_tensor: bool) -> torch.Tensor:
    """int64 tensor shaped like ``module.<name>``: index of each element's scale in the flat
    scale vector of ``quantize_parameter`` (used to broadcast learned scales in QAT)."""
    weight = getattr(module, name).detach()
    index = torch.zeros(weight.shape, dtype=torch.int64)
    if per_tensor:
        return index
    offset = 0
    for view in matrix_views(module, name, index):
        cols = view.shape[1]
        for rows in row_groups(view.shape[0], group_size):
            view[rows] = torch.arange(offset, offset + cols)
            offset += cols
    return index
