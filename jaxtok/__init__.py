"""jaxtok: JAX/Flax visual tokenizers and token-based image generators."""

from importlib.metadata import PackageNotFoundError, version

try:
  __version__ = version("jaxtok")
except PackageNotFoundError:  # running from a source tree that was never installed
  __version__ = "0.0.0+source"


def load(path: str, **kwargs):
  """A tokenizer or generator export (`jaxtok export`, `jaxtok convert`), ready to use.

  >>> tok = jaxtok.load("runs/demo/tokenizer/export")
  >>> ids = tok.encode(images)  # uint8 or [-1, 1] NHWC
  >>> recon = tok.decode(ids)
  >>> gpt = jaxtok.load("runs/demo/generator/export")
  >>> ids = gpt.sample(0, num_samples=4)
  """
  from jaxtok import inference  # imported here: `import jaxtok` stays light

  return inference.load(path, **kwargs)
