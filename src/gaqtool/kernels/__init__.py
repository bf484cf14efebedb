"""Kernels: int8 GEMMs for ``nn.Linear`` wrappers (``int8``) and the fused uvu tensor-product
convolution (``uvu_convolution``, C loops built by ``native``; ``roofline`` counts its FLOPs)."""

from gaqtool.kernels.int8 import (IntegerKernelReport, disable_integer_kernels,
                                  enable_integer_kernels, int8_linear, probe_int_mm,
                                  quantize_rows)
from gaqtool.kernels.uvu_convolution import EdgeIndex, UvuConvolution, edge_index

__all__ = ["IntegerKernelReport", "enable_integer_kernels", "disable_integer_kernels",
           "int8_linear", "quantize_rows", "probe_int_mm", "UvuConvolution", "EdgeIndex", "edge_index"]
