"""Metrics: accuracy against references, equivariance error, sizes."""
