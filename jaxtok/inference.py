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

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxtok import build
from jaxtok.data import images as image_lib
from jaxtok.quantizers.base import checked_indices

CONFIG_FILE = "config.json"
VARIABLES_DIR = "variables"


class LoadedTokenizer(NamedTuple):
  """A ready tokenizer: `encode(images)` (uint8 or [-1, 1] NHWC) -> ids, `decode(ids)`.

  `decode` checks the ids' range by default, under jit too (`checked_indices`): eager ids
  out of range raise a ValueError; traced ones are clamped with an IndexRangeWarning naming
  their count, where an unchecked decode would silently give NaN or wrong images.
  """

  model: Any  # a jaxtok.models.tokenizers.Tokenizer
  variables: dict[str, Any]  # {"params", "quantizer_state"?}
  config: ml_collections.ConfigDict  # the config of the run it came from

  @property
  def image_size(self) -> int:
    """The side of the square images it was trained on."""
    return int(self.config.data.image_size)

  def encode(self, images, **kwargs):
    return self.model.apply(self.variables, images, method="encode", **kwargs)

  def decode(self, indices, *, check: bool = True, **kwargs):
    """Token ids -> images [B, H, W, 3] f32 in [-1, 1] (unclipped); check: see the class."""
    codebook_size = self.model.quantizer.codebook_size
    if check and codebook_size > 0:  # 0: continuous latents, refused by the model's decode
      indices = checked_indices(indices, codebook_size)
    return self.model.apply(self.variables, indices, method="decode", **kwargs)

  def reconstruct(self, images):
    """Images -> reconstructions in [-1, 1] (unclipped), one encode-decode pass."""
    return self.model.apply(self.variables, images).reconstruction


class LoadedGenerator(NamedTuple):
  """A ready token generator (GPT or MaskGIT): `sample(rng, labels, **options)` -> ids.

  `sample` checks the class labels' range as `LoadedTokenizer.decode` checks ids, under jit
  too: unchecked, label num_classes would silently sample unconditionally (the null class)
  and larger ones from a NaN embedding.
  """

  model: Any  # a jaxtok.models.generators GPT or MaskGIT
  variables: dict[str, Any]  # {"params"}
  config: ml_collections.ConfigDict

  def sample(self, rng, labels=None, *, check: bool = True, **kwargs):
    """Token ids [B, *token_shape]; options as the model's `sample` (num_samples, cfg_scale,
    temperature, top_k, top_p; num_steps for MaskGIT)."""
    if check and labels is not None and self.model.num_classes > 0:
      labels = checked_indices(labels, self.model.num_classes, name="labels")
    return self.model.sample(self.variables["params"], rng, labels, **kwargs)


def _kind(config, where: str) -> str:
  """"tokenizer" or "generator", from the config's trainer."""
  trainer = config.get("trainer") if hasattr(config, "get") else None
  if trainer not in build.TRAINED_KINDS:
    raise ValueError(f"{where} is not a jaxtok model config: its 'trainer' must be one of "
                     f"{sorted(build.TRAINED_KINDS)}; got {trainer!r}")
  return build.TRAINED_KINDS[trainer]


def assemble(config: dict, variables: dict, *, dtype: str = "float32"):
  """A LoadedTokenizer or LoadedGenerator from a run's config and the model's variables, which
  must have the shapes of the variables of the model the config describes."""
  kind = _kind(config, "the config")
  if dtype not in build.DTYPES:
    raise ValueError(f"dtype must be one of {sorted(build.DTYPES)}; got {dtype!r}")
  config = ml_collections.ConfigDict(config)
  model = build.model(config, dtype)
  variables = {k: jax.tree.map(jnp.asarray, v) for k, v in dict(variables).items() if v}
  check_variables(model, variables, kind, config)
  return (LoadedTokenizer if kind == "tokenizer" else LoadedGenerator)(model, variables, config)


def check_variables(model, variables: dict, kind: str, config) -> None:
  """Raises ValueError unless `variables` have the tree and shapes `model.init` gives (traced
  only, nothing computed): else the first use would fail deep in Flax, after any sampling."""
  if kind == "tokenizer":
    size = int(config.data.image_size)
    inputs = jnp.zeros((1, size, size, 3), jnp.float32)
  elif hasattr(model, "example_inputs"):  # VAR reads continuous next-scale inputs
    inputs = model.example_inputs(1)
  else:
    inputs = jnp.zeros((1, *model.token_shape), jnp.int32)

  def init():
    key = jax.random.key(0)
    return nn.meta.unbox(model.init({"params": key, "quantizer": key, "dropout": key}, inputs))

  expected = _shapes({k: v for k, v in jax.eval_shape(init).items() if k in ("params",
                                                                              *variables)})
  given = _shapes(variables)
  paths = sorted(expected.keys() | given.keys())
  wrong = [f"{p} has shape {given[p]}, the model's {expected[p]}" if p in given and p in expected
           else f"{p} is missing" if p in expected else f"{p} is not in the model"
           for p in paths if given.get(p) != expected.get(p)]
  if wrong:
    more = f" and {len(wrong) - 3} more" if len(wrong) > 3 else ""
    raise ValueError(f"the variables do not fit the model the config describes: "
                     f"{'; '.join(wrong[:3])}{more} (config and variables from different runs?)")


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(np.shape(leaf))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{config_path} is not valid JSON ({e}): export the model again") from None
  _kind(config, config_path)
  variables_dir = os.path.join(os.path.abspath(path), VARIABLES_DIR)
  if not os.path.isdir(variables_dir):
    raise FileNotFoundError(f"{path!r} is an incomplete jaxtok export: it has {CONFIG_FILE} "
                            f"but no {VARIABLES_DIR}/ (the model's weights); export it again")
  variables = ocp.StandardCheckpointer().restore(variables_dir)
  try:
    return assemble(config, variables, dtype=dtype)
  except ValueError as e:  # say which export
    raise ValueError(f"{path!r}: {e}") from e


def tokenizer_fingerprint(config) -> dict[str, Any]:
  """What decides a tokenizer's tokens, from its run's config: {"model": its model section,
  "quantizer": its quantizer section, "data.image_size": its image side}, as JSON values
  (tuples become lists), so that configs read back from any JSON file compare equal."""
  sections = {}
  for key in ("model", "quantizer", "data.image_size"):
    value = config
    for part in key.split("."):
      if not hasattr(value, "items") or part not in value:
        raise ValueError(f"not a tokenizer config: no {key!r} entry")
      value = value[part]
    sections[key] = json.loads(json.dumps(build.plain(value), default=str))
  return sections


def _flat(value, prefix: str) -> dict[str, Any]:
  """{"a.b.c": leaf} for every leaf of nested dicts under `prefix`."""
  if not (isinstance(value, dict) and value):
    return {prefix: value}
  return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}").items()}


def _differences(trained: dict, given: dict, *, limit: int = 4) -> str:
  """'model.config.ch: 32 vs 64, ...' over the fields where two fingerprints differ."""
  trained = {k: v for key, item in trained.items() for k, v in _flat(item, key).items()}
  given = {k: v for key, item in given.items() for k, v in _flat(item, key).items()}
  absent = object()
  keys = [k for k in sorted(trained.keys() | given.keys())
          if trained.get(k, absent) != given.get(k, absent)]
  show = lambda fields, k: json.dumps(fields[k]) if k in fields else "(absent)"
  diffs = [f"{k}: {show(trained, k)} vs {show(given, k)}" for k in keys[:limit]]
  return ", ".join(diffs) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_pair(generator: LoadedGenerator, tokenizer: LoadedTokenizer) -> None:
  """Raises ValueError unless `tokenizer` makes the tokens `generator` was trained on.

  When the generator's config carries the config of the tokenizer its tokens came from (the
  `tokenizer` entry: the token directory's `tokenizer_config`), their fingerprints
  (`tokenizer_fingerprint`) must agree; token grids and codebook sizes must agree always.
  """
  if not isinstance(tokenizer, LoadedTokenizer) or not isinstance(generator, LoadedGenerator):
    raise ValueError(f"need a generator and a tokenizer export; got a "
                     f"{type(generator).__name__} and a {type(tokenizer).__name__}")
  trained_on = generator.config.get("tokenizer")
  if trained_on:
    try:
      trained = tokenizer_fingerprint(trained_on)
    except ValueError as e:
      raise ValueError(f"the generator config's 'tokenizer' entry: {e}") from None
    given = tokenizer_fingerprint(tokenizer.config)
    if trained != given:
      origin = trained_on.get("exported_from") or {}
      hint = (f"; its tokens were made by the export of {origin['workdir']} (step "
              f"{origin.get('step')})" if "workdir" in origin else "")
      raise ValueError(f"this tokenizer is not the one that made the generator's training "
                       f"tokens (the generator's tokenizer vs this one): "
                       f"{_differences(trained, given)}{hint}")
  model = generator.model
  codebook = tokenizer.model.quantizer.codebook_size
  size = tokenizer.image_size
  tok_shape = tuple(tokenizer.model.token_shape((size, size)))
  if codebook != model.codebook_size or tok_shape != tuple(model.token_shape):
    raise ValueError(f"the tokenizer makes {tok_shape} tokens of {codebook} codes; the generator "
                     f"was trained on {tuple(model.token_shape)} tokens of "
                     f"{model.codebook_size} codes")
  channels = tokenizer.model.quantizer.code_dim
  if getattr(model, "CONTINUOUS_TOKENS", False) and channels != model.token_dim:
    raise ValueError(f"the tokenizer makes latents of {channels} channels; the generator was "
                     f"trained on {model.token_dim}")


def sample_options(generator: LoadedGenerator, tokenizer: LoadedTokenizer,
                   options: dict) -> dict:
  """The `sample` keywords for `generator` paired with `tokenizer`: `options` plus, for
  generators whose inputs the tokenizer's quantizer makes (VAR: SAMPLES_WITH_QUANTIZER), that
  quantizer and its variables."""
  if not getattr(generator.model, "SAMPLES_WITH_QUANTIZER", False):
    return dict(options)
  return dict(options, quantizer=tokenizer.model.quantizer,
              quantizer_variables={"params": tokenizer.variables["params"]["quantizer"]})


def sample_images(generator: LoadedGenerator, tokenizer: LoadedTokenizer, *, num: int = 16,
                  seed: int = 0, class_id: int | None = None, **options) -> dict[str, np.ndarray]:
  """Samples `num` token grids (options: the generator's `sample` keywords, e.g. cfg_scale,
  temperature, top_k, top_p; num_steps for MaskGIT) and decodes them with `tokenizer`.
  Returns {"tokens": int32 [num, *token_shape], "labels": int32 [num] (-1: unconditional),
  "images": uint8 [num, H, W, 3]}."""
  check_pair(generator, tokenizer)
  model = generator.model
  if not (_is_int(num) and num >= 1):
    raise ValueError(f"num must be an integer >= 1; got {num!r}")
  if not (_is_int(seed) and 0 <= seed < 2**32):
    raise ValueError(f"seed must be an integer in [0, 2**32) (PRNG seeds are 32-bit: -1 and "
                     f"2**32 - 1 would draw the same samples); got {seed!r}")
  labels = None
  if class_id is not None:
    if not _is_int(class_id):
      raise ValueError(f"class_id must be an integer class id; got {class_id!r}")
    if model.num_classes == 0:
      raise ValueError(f"class_id: this generator is unconditional (num_classes=0); got "
                       f"{class_id}")
    if not 0 <= class_id < model.num_classes:
      raise ValueError(f"class_id must lie in [0, {model.num_classes}); got {class_id}")
    labels = np.full((num,), class_id, np.int32)
  options = sample_options(generator, tokenizer, options)
  ids = generator.sample(seed, labels, num_samples=None if labels is not None else num,
                         **options)
  if getattr(model, "CONTINUOUS_TOKENS", False):  # MAR: latents, decoded as such
    images = jax.jit(lambda x: tokenizer.model.apply(tokenizer.variables, x,
                                                     method="decode_latents"))(ids)
  else:  # checked here, eagerly, for a ValueError: in the jitted decode it could only warn
    ids = checked_indices(ids, tokenizer.model.quantizer.codebook_size,
                          name="sampled token ids")
    images = jax.jit(tokenizer.decode)(ids)
  return {"tokens": np.asarray(ids),
          "labels": np.full((num,), -1 if class_id is None else class_id, np.int32),
          "images": np.asarray(image_lib.to_uint8(images))}


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def write_samples(result: dict[str, np.ndarray], out: str) -> None:
  """out/samples.png (the image grid) and out/samples.npz (tokens, labels)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  os.makedirs(out, exist_ok=True)
  Image.fromarray(image_lib.grid(result["images"])).save(os.path.join(out, "samples.png"))
  np.savez(os.path.join(out, "samples.npz"), tokens=result["tokens"], labels=result["labels"])
