"""Integer kernels for quantized models: int8 GEMMs for ``nn.Linear`` wrappers (see ``int8``)."""

from gaqtool.kernels.int8 import (IntegerKernelReport, disable_integer_kernels,
                                  enable_integer_kernels, int8_linear, probe_int_mm,
                                  quantize_rows)

__all__ = ["IntegerKernelReport", "enable_integer_kernels", "disable_integer_kernels",
           "int8_linear", "quantize_rows", "probe_int_mm"]
