"""File formats: FP32 checkpoints, quantized safetensors files, atomic writes."""
