"""Fused distance + argmin over a codebook: `nearest_code(x, codebook, metric=..., impl=...)`."""

from jaxtok.kernels.nearest_code.api import IMPLS, METRICS, nearest_code

__all__ = ["IMPLS", "METRICS", "nearest_code"]
