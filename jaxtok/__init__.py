"""jaxtok: JAX/Flax visual tokenizers and token-based image generators."""

from importlib.metadata import PackageNotFoundError, version

try:
  __version__ = version("jaxtok")
except PackageNotFoundError:  # running from a source tree that was never installed
  __version__ = "0.0.0+source"


def load(path: str, **kwargs):
  """A tokenizer exported with `jaxtok export`: `(model, variables, config)` with encode/decode.

  >>> tok = jaxtok.load("runs/demo/export")
  >>> ids = tok.encode(images)  # uint8 or [-1, 1] NHWC
  >>> recon = tok.decode(ids)
  """
  from jaxtok.train import export  # imported here: `import jaxtok` stays light

  return export.load(path, **kwargs)
