"""Quantization: primitives, observers, MDDQ, quantized modules."""
