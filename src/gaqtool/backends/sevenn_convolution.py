"""SevenNet's convolution with gaqtool's fused uvu kernel (``gaqtool.kernels.uvu_convolution``).

:func:`use_fused_convolutions` replaces every ``sevenn.nn.convolution.IrrepsConvolution`` of an
``AtomGraphSequential`` by a :class:`FusedSevenNetConvolution` that keeps the same children
(``weight_nn``, the e3nn ``convolution`` product, ``denominator``) under the same names, so state
dicts, saved files, module roles and quantization handlers see exactly what they saw before.
Only the forward differs: gather, tensor product and scatter-sum run as one fused kernel
instead of ``TensorProduct(x[src], Y, w)`` followed by sevenn's scatter.

If the product is wrapped by gaqtool's quantization (``QuantizedModule``), its input
quantizers are applied to the node features before the gather (they act row by row, so this
equals quantizing each gathered copy). While they are calibrating, the forward is sevenn's own
(gathered inputs), so calibration statistics are unchanged.
"""

from __future__ import annotations

from e3nn import o3
from torch import nn

from gaqtool.kernels.uvu_convolution import UvuConvolution, edge_index
from gaqtool.quant.activation import ActivationQuantizer
from gaqtool.quant.modules import QuantizedModule

__all__ = ["FusedSevenNetConvolution", "use_fused_convolutions", "EDGE_INDEX_KEY"]

EDGE_INDEX_KEY = "gaqtool_edge_index"  # data-dict key caching the sorted edges for all layers


class FusedSevenNetConvolution(nn.Module):
    """Drop-in for ``IrrepsConvolution``: data[key_x] (N, irreps_x.dim) -> (N, irreps_mid.dim),
    sum over incoming edges of the uvu product of sender features, edge harmonics
    data[key_filter] (E, sh dim) and radial weights weight_nn(data[key_weight_input]),
    divided by ``denominator``."""

    def __init__(self, original: nn.Module):
        super().__init__()
        tp = original.convolution
        if not isinstance(tp, o3.TensorProduct):
            raise TypeError(f"expected an e3nn TensorProduct, got {type(tp).__name__}")
        self.weight_nn = original.weight_nn
        self.convolution = tp
        self.denominator = original.denominator
        self.fused = UvuConvolution.from_tensor_product(tp)
        for key in ("key_x", "key_filter", "key_weight_input", "key_edge_idx"):
            setattr(self, key, getattr(original, key))
        # sevenn's plain attributes its other code reads (e.g. the state-dict patch of old
        # checkpoints reads the instruction order); parallel models are not switched
        for key in ("_instructions_before_sort", "convolution_kwargs", "weight_nn_kwargs",
                    "_comm_size", "layer_instantiated", "is_parallel"):
            if key in original.__dict__:
                setattr(self, key, original.__dict__[key])

    def _quantizers(self) -> tuple[nn.Module, nn.Module, bool]:
        """(node-feature quantizer, harmonics quantizer, calibrating) of a quantized product."""
        if not isinstance(self.convolution, QuantizedModule):
            return nn.Identity(), nn.Identity(), False
        q_x, q_sh = list(self.convolution.input_quantizers)[:2]
        calibrating = any(isinstance(q, ActivationQuantizer) and q.mode == "calibrate" for q in (q_x, q_sh))
        return q_x, q_sh, calibrating

    def forward(self, data: dict) -> dict:
        weight = self.weight_nn(data[self.key_weight_input])
        x, sh = data[self.key_x], data[self.key_filter]
        edge_src, edge_dst = data[self.key_edge_idx][1], data[self.key_edge_idx][0]
        q_x, q_sh, calibrating = self._quantizers()
        if calibrating:  # sevenn's formulation, so observers see the gathered features
            message = self.convolution(x[edge_src], sh, weight)
            out = x.new_zeros(x.shape[0], message.shape[1]).index_add(0, edge_dst, message)
        else:
            edges = data.get(EDGE_INDEX_KEY)
            if edges is None or edges.num_nodes != x.shape[0] or edges.src.numel() != edge_src.numel():
                edges = edge_index(edge_src, edge_dst, x.shape[0])
                data[EDGE_INDEX_KEY] = edges
            out = self.fused(q_x(x), q_sh(sh), weight, edges)
        data[self.key_x] = out.div(self.denominator)
        return data


def use_fused_convolutions(net: nn.Module) -> list[str]:
    """Replace, in place, every sevenn ``IrrepsConvolution`` child of ``net`` whose product has
    only uvu paths with per-edge weights; returns the names replaced."""
    replaced = []
    for name, module in list(net._modules.items()):
        if type(module).__name__ != "IrrepsConvolution" or getattr(module, "is_parallel", False):
            continue
        tp = getattr(module, "convolution", None)
        if not isinstance(tp, o3.TensorProduct) or tp.shared_weights or tp.internal_weights:
            continue
        if any(ins.connection_mode != "uvu" for ins in tp.instructions):
            continue
        net._modules[name] = FusedSevenNetConvolution(module)
        replaced.append(name)
    return replaced
