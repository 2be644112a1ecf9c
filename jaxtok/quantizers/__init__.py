"""Quantizers: one per file, each returning `QuantizerOutput` (protocol in `base.py`); built
from config sections by `jaxtok.build.quantizer`."""

from jaxtok.quantizers.base import QuantizerOutput
from jaxtok.quantizers.bsq import BSQ
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.group import GroupQuantizer
from jaxtok.quantizers.kl import KLQuantizer
from jaxtok.quantizers.lfq import LFQ
from jaxtok.quantizers.multiscale import MultiScaleVQ
from jaxtok.quantizers.residual import ResidualFSQ, ResidualVQ
from jaxtok.quantizers.simvq import SimVQ
from jaxtok.quantizers.vq import VectorQuantizer

__all__ = ["BSQ", "FSQ", "GroupQuantizer", "KLQuantizer", "LFQ", "MultiScaleVQ",
           "QuantizerOutput",
           "ResidualFSQ", "ResidualVQ", "SimVQ", "VectorQuantizer"]

