"""Config -> modules: the one resolver for quantizers, tokenizers, discriminators, generators.

A config section names its class `"<module>.<Class>"` under the package of its kind (the module
path is the registry, as in big_vision): `model.name = "vqgan.VQGAN"` for a tokenizer,
`"ar.GPT"` for a generator, `quantizer.name = "fsq.FSQ"`, `discriminator.name =
"discriminators.PatchGANDiscriminator"`. `preset` picks one of the class's named presets
(`Class.from_preset`); every other entry overrides a field. A quantizer field holding another
quantizer (ResidualVQ's template) is a nested section with its own `name`.
"""

import importlib
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxtok.models.presets import construct

# Where each kind's "<module>.<Class>" names are looked up.
PACKAGES = {
    "quantizer": "jaxtok.quantizers",
    "tokenizer": "jaxtok.models.tokenizers",
    "generator": "jaxtok.models.generators",
    "discriminator": "jaxtok.models",
}
# config.trainer -> the kind of model it trains.
TRAINED_KINDS = {"tokenizer": "tokenizer", "ar": "generator", "maskgit": "generator",
                 "rar": "generator", "var": "generator",
                 "mar": "generator"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
EXAMPLES = {"quantizer": "'fsq.FSQ'", "tokenizer": "'vqgan.VQGAN'", "generator": "'ar.GPT'",
            "discriminator": "'discriminators.PatchGANDiscriminator'"}


def plain(value):
  """ConfigDict / lists -> dicts / tuples, as dataclass fields want them."""
  if isinstance(value, Mapping) or hasattr(value, "items"):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def resolve(kind: str, name: str) -> type:
  """The class `name` ("<module>.<Class>") names under the package of `kind`."""
  module_name, _, class_name = str(name).rpartition(".")
  try:
    cls = getattr(importlib.import_module(f"{PACKAGES[kind]}.{module_name}"), class_name)
  except (ImportError, AttributeError, ValueError):
    cls = None
  if not isinstance(cls, type) or not issubclass(cls, nn.Module):
    raise ValueError(f"{kind} name must be '<module>.<Class>' of {PACKAGES[kind]}, e.g. "
                     f"{EXAMPLES[kind]}; got {name!r}")
  return cls


def module(kind: str, section, *, dtype: str | None = None, **extra) -> nn.Module:
  """Builds the module a config section describes; `extra` fields (e.g. quantizer=) are added,
  and `dtype` (a DTYPES name) is set when the class has a dtype field."""
  fields = plain(section)
  name, preset = fields.pop("name", None), fields.pop("preset", None)
  cls = resolve(kind, name)
  if kind == "quantizer":  # nested quantizer sections (templates of residual / group)
    fields = {k: module("quantizer", v) if isinstance(v, dict) and "name" in v else v
              for k, v in fields.items()}
  fields.update(extra)
  if dtype is not None and "dtype" in cls.__dataclass_fields__:
    if dtype not in DTYPES:
      raise ValueError(f"train.compute_dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
    fields["dtype"] = DTYPES[dtype]
  try:
    return cls.from_preset(preset, **fields) if preset else construct(cls, fields)
  except ValueError as e:
    raise ValueError(f"{kind} {name!r}: {e}") from None


def quantizer(section) -> nn.Module:
  return module("quantizer", section)


def tokenizer(model_section, quantizer_section, dtype: str = "float32") -> nn.Module:
  return module("tokenizer", model_section, dtype=dtype, quantizer=quantizer(quantizer_section))


def generator(model_section, dtype: str = "float32") -> nn.Module:
  return module("generator", model_section, dtype=dtype)


def discriminator(section, dtype: str = "float32") -> nn.Module:
  return module("discriminator", section, dtype=dtype)


def model(config, dtype: str | None = None) -> nn.Module:
  """The model a run's config trains (tokenizer or generator), in `dtype` (default: the
  config's train.compute_dtype)."""
  kind = TRAINED_KINDS.get(config.get("trainer"))
  if kind is None:
    raise ValueError(f"config.trainer must be one of {sorted(TRAINED_KINDS)}; got "
                     f"{config.get('trainer')!r}")
  dtype = dtype or config.train.compute_dtype
  if kind == "tokenizer":
    return tokenizer(config.model, config.quantizer, dtype)
  return generator(config.model, dtype)
