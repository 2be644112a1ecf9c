"""Exported models for library users and the CLI: `load` a tokenizer or a generator from an
export directory, and sample generators into images and image grids.

An export directory holds `config.json` (the run's config) and `variables/` (an Orbax
checkpoint of the model's variables: {"params"} plus "quantizer_state" for tokenizers with EMA
codebooks). `jaxtok export` writes one from a training run; converters write the same layout.
This module never imports the trainers.
"""

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxtok import build
from jaxtok.data import images as image_lib

CONFIG_FILE = "config.json"
VARIABLES_DIR = "variables"


class LoadedTokenizer(NamedTuple):
  """A ready tokenizer: `encode(images)` (uint8 or [-1, 1] NHWC) -> ids, `decode(ids)`."""

  model: Any  # a jaxtok.models.tokenizers.Tokenizer
  variables: dict[str, Any]  # {"params", "quantizer_state"?}
  config: ml_collections.ConfigDict  # the config of the run it came from

  @property
  def image_size(self) -> int:
    """The side of the square images it was trained on."""
    return int(self.config.data.image_size)

  def encode(self, images, **kwargs):
    return self.model.apply(self.variables, images, method="encode", **kwargs)

  def decode(self, indices, **kwargs):
    return self.model.apply(self.variables, indices, method="decode", **kwargs)

  def reconstruct(self, images):
    """Images -> reconstructions in [-1, 1] (unclipped), one encode-decode pass."""
    return self.model.apply(self.variables, images).reconstruction


class LoadedGenerator(NamedTuple):
  """A ready token generator (GPT or MaskGIT): `sample(rng, labels, **options)` -> ids."""

  model: Any  # a jaxtok.models.generators GPT or MaskGIT
  variables: dict[str, Any]  # {"params"}
  config: ml_collections.ConfigDict

  def sample(self, rng, labels=None, **kwargs):
    return self.model.sample(self.variables["params"], rng, labels, **kwargs)


def assemble(config: dict, variables: dict, *, dtype: str = "float32"):
  """A LoadedTokenizer or LoadedGenerator from a run's config and the model's variables."""
  config = ml_collections.ConfigDict(config)
  model = build.model(config, dtype)
  variables = {k: jax.tree.map(jnp.asarray, v) for k, v in dict(variables).items() if v}
  kind = build.TRAINED_KINDS[config.trainer]
  return (LoadedTokenizer if kind == "tokenizer" else LoadedGenerator)(model, variables, config)


def save(out: str, config: dict, variables: dict) -> str:
  """Writes an export directory (config.json and variables/) to `out`; returns its path."""
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out, VARIABLES_DIR), variables, force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(out, CONFIG_FILE), "w") as f:
    json.dump(config, f, indent=2)
  return out


def load(path: str, *, dtype: str = "float32") -> LoadedTokenizer | LoadedGenerator:
  """The model exported to `path` (by `jaxtok export` or `jaxtok convert`), ready to use."""
  config_path = os.path.join(path, CONFIG_FILE)
  if not os.path.isfile(config_path):
    hint = ""
    if os.path.isdir(os.path.join(path, "checkpoints")):
      hint = (f" (a training workdir: export it first with `jaxtok export --workdir {path} "
              f"--out EXPORT_DIR`)")
    raise FileNotFoundError(f"{path!r} is not a jaxtok export: no {CONFIG_FILE}{hint}")
  with open(config_path) as f:
    config = json.load(f)
  variables = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path),
                                                              VARIABLES_DIR))
  return assemble(config, variables, dtype=dtype)


def check_pair(generator: LoadedGenerator, tokenizer: LoadedTokenizer) -> None:
  """Raises ValueError unless `tokenizer` makes the tokens `generator` was trained on."""
  if not isinstance(tokenizer, LoadedTokenizer) or not isinstance(generator, LoadedGenerator):
    raise ValueError(f"need a generator and a tokenizer export; got a "
                     f"{type(generator).__name__} and a {type(tokenizer).__name__}")
  model = generator.model
  codebook = tokenizer.model.quantizer.codebook_size
  size = tokenizer.image_size
  tok_shape = tuple(tokenizer.model.token_shape((size, size)))
  if codebook != model.codebook_size or tok_shape != tuple(model.token_shape):
    raise ValueError(f"the tokenizer makes {tok_shape} tokens of {codebook} codes; the generator "
                     f"was trained on {tuple(model.token_shape)} tokens of "
                     f"{model.codebook_size} codes")


def sample_images(generator: LoadedGenerator, tokenizer: LoadedTokenizer, *, num: int = 16,
                  seed: int = 0, class_id: int | None = None, **options) -> dict[str, np.ndarray]:
  """Samples `num` token grids (options: the generator's `sample` keywords, e.g. cfg_scale,
  temperature, top_k, top_p; num_steps for MaskGIT) and decodes them with `tokenizer`.
  Returns {"tokens": int32 [num, *token_shape], "labels": int32 [num] (-1: unconditional),
  "images": uint8 [num, H, W, 3]}."""
  check_pair(generator, tokenizer)
  model = generator.model
  if num < 1:
    raise ValueError(f"num must be >= 1; got {num}")
  labels = None
  if class_id is not None:
    if model.num_classes == 0:
      raise ValueError(f"class_id: this generator is unconditional (num_classes=0); got "
                       f"{class_id}")
    if not 0 <= class_id < model.num_classes:
      raise ValueError(f"class_id must lie in [0, {model.num_classes}); got {class_id}")
    labels = np.full((num,), class_id, np.int32)
  ids = generator.sample(seed, labels, num_samples=None if labels is not None else num,
                         **options)
  images = jax.jit(tokenizer.decode)(ids)
  return {"tokens": np.asarray(ids),
          "labels": np.full((num,), -1 if class_id is None else class_id, np.int32),
          "images": np.asarray(image_lib.to_uint8(images))}


def write_samples(result: dict[str, np.ndarray], out: str) -> None:
  """out/samples.png (the image grid) and out/samples.npz (tokens, labels)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  os.makedirs(out, exist_ok=True)
  Image.fromarray(image_lib.grid(result["images"])).save(os.path.join(out, "samples.png"))
  np.savez(os.path.join(out, "samples.npz"), tokens=result["tokens"], labels=result["labels"])
