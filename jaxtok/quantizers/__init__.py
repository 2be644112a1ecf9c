"""Quantizers: one per file, each returning `QuantizerOutput`."""

from jaxtok.quantizers.base import QuantizerOutput

__all__ = ["QuantizerOutput"]
