"""jaxtok: JAX/Flax visual tokenizers and token-based image generators."""

from importlib.metadata import PackageNotFoundError, version

try:
  __version__ = version("jaxtok")
except PackageNotFoundError:  # running from a source tree that was never installed
  __version__ = "0.0.0+source"
