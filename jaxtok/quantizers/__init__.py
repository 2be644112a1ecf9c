"""Quantizers: one per file, each returning `QuantizerOutput` (protocol in `base.py`)."""

from jaxtok.quantizers.base import QuantizerOutput
from jaxtok.quantizers.bsq import BSQ
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.group import GroupQuantizer
from jaxtok.quantizers.kl import KLQuantizer
from jaxtok.quantizers.lfq import LFQ
from jaxtok.quantizers.residual import ResidualFSQ, ResidualVQ
from jaxtok.quantizers.simvq import SimVQ
from jaxtok.quantizers.vq import VectorQuantizer

__all__ = ["BSQ", "FSQ", "GroupQuantizer", "KLQuantizer", "LFQ", "QuantizerOutput",
           "ResidualFSQ", "ResidualVQ", "SimVQ", "VectorQuantizer"]


def build(config) -> "flax.linen.Module":
  """Builds a quantizer from a config mapping: `name` is "<module>.<Class>" under this package.

  Fields holding another quantizer (the template of ResidualVQ or GroupQuantizer) are nested
  mappings with their own `name`:

    build({"name": "residual.ResidualVQ", "num_quantizers": 4,
           "quantizer": {"name": "vq.VectorQuantizer", "codebook_size": 1024, "dim": 8}})
  """
  import importlib

  config = dict(config)
  name = config.pop("name", None)
  module_name, _, class_name = str(name).rpartition(".")
  try:
    cls = getattr(importlib.import_module(f"jaxtok.quantizers.{module_name}"), class_name)
  except (ImportError, AttributeError, ValueError):
    raise ValueError(f"quantizer name must be '<module>.<Class>' of jaxtok.quantizers, e.g. "
                     f"'fsq.FSQ' or 'vq.VectorQuantizer'; got {name!r}") from None
  kwargs = {k: build(v) if hasattr(v, "keys") and "name" in v else v for k, v in config.items()}
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return cls(**kwargs)
