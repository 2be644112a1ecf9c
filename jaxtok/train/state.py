"""What a tokenizer run is made of: models and optimizers built from the config, and the
training state they update.

Everything a step reads or writes lives in `TokenizerState`, one pytree: checkpointing it (plus
the Grain iterator) is enough to resume bit for bit. Random keys are stored as raw key data
(uint32) of the "rbg" PRNG: XLA compiles threefry initializers of a few hundred parameters for
tens of seconds on the CPU, rbg ones in a fraction of that, and raw data checkpoints as a plain
array on every Orbax version.
"""

import dataclasses
import importlib
import inspect
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxtok import quantizers
from jaxtok.models import discriminators
from jaxtok.models.tokenizers.tokenizer import Tokenizer

PRNG_IMPL = "rbg"
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

PyTree = Any


def make_key(seed: int) -> jax.Array:
  """A typed PRNG key of the trainer's implementation."""
  return jax.random.key(seed, impl=PRNG_IMPL)


def wrap_key(data: jax.Array) -> jax.Array:
  """Raw key data as stored in the state -> a typed key."""
  return jax.random.wrap_key_data(data, impl=PRNG_IMPL)


class TokenizerState(flax.struct.PyTreeNode):
  """Everything that changes during tokenizer training (a pytree of arrays only).

  Collections that a configuration does not use (no discriminator, no stateful quantizer) are
  empty dicts, so the structure is fixed by the config alone.
  """

  step: jax.Array  # int32 scalar: completed steps, skipped ones included
  rng: jax.Array  # uint32 raw rbg key data; split once per step
  params: PyTree  # tokenizer "params"
  quantizer_state: PyTree  # tokenizer "quantizer_state" collection (EMA codebooks, counts)
  ema_params: PyTree  # exponential moving average of `params`
  opt_state: PyTree  # tokenizer optimizer state
  d_params: PyTree  # discriminator "params" ({} without a GAN)
  d_state: PyTree  # discriminator's other collections, e.g. {"batch_stats": ...}
  d_opt_state: PyTree  # discriminator optimizer state
  skipped: jax.Array  # int32: steps skipped for a non-finite loss or gradient, in total
  skipped_in_a_row: jax.Array  # int32: consecutive skipped steps ending at `step`


def learning_rate_schedule(*, lr: float, warmup_steps: int, total_steps: int,
                           schedule: str = "cosine", end_factor: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to end_factor * lr at
  `total_steps` ("cosine") or constant ("constant")."""
  if lr < 0 or warmup_steps < 0 or total_steps < 1:
    raise ValueError(f"need lr >= 0, warmup_steps >= 0, total_steps >= 1; got lr={lr}, "
                     f"warmup_steps={warmup_steps}, total_steps={total_steps}")
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * end_factor)
  if schedule == "constant":
    if warmup_steps == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
        [warmup_steps])
  raise ValueError(f"schedule must be 'cosine' or 'constant'; got {schedule!r}")


def _decay_mask(params: PyTree) -> PyTree:
  # Weight decay on kernels and embeddings only: norms and biases (ndim < 2) keep their scale.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(*, lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                   end_factor: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0,
                   grad_clip_norm: float = 0.0) -> tuple[optax.GradientTransformation,
                                                         optax.Schedule]:
  """AdamW with optional global-norm clipping first, and its learning-rate schedule.

  The chain always has both links (clipping is the identity when grad_clip_norm is 0), so the
  optimizer state's layout depends on no float setting.
  """
  sched = learning_rate_schedule(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps,
                                 schedule=schedule, end_factor=end_factor)
  clip = optax.clip_by_global_norm(grad_clip_norm) if grad_clip_norm > 0 else optax.identity()
  adam = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
  return optax.chain(clip, adam), sched


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf in f32."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)



def global_norm(tree: PyTree) -> jax.Array:
  """sqrt of the sum of squares of every leaf, in f32."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
                  if leaves else jnp.float32(0.0))


# ------------------------------------------------------------------ models from the config

def plain(value):
  """ConfigDict / lists -> dicts / tuples, as dataclass fields want them."""
  if hasattr(value, "items"):
    return {k: plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return tuple(plain(v) for v in value)
  return value


def build_tokenizer(model_config, quantizer: nn.Module, dtype) -> Tokenizer:
  """`model.name` is a module under jaxtok.models (e.g. "tokenizers.vqgan") defining one
  Tokenizer subclass; the other entries are its fields (a mapping for a dataclass-valued
  field, e.g. VQGAN's `config`, replaces that dataclass's named entries)."""
  fields = plain(model_config)
  name = fields.pop("name")
  try:
    module = importlib.import_module(f"jaxtok.models.{name}")
  except ImportError:
    raise ValueError(f"model.name must be a module under jaxtok.models such as "
                     f"'tokenizers.vqgan'; got {name!r}") from None
  classes = [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, Tokenizer)
             and c.__module__ == module.__name__]
  if len(classes) != 1:
    raise ValueError(f"model.name={name!r}: expected one Tokenizer class in {module.__name__}, "
                     f"found {[c.__name__ for c in classes]}")
  cls = classes[0]
  known = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
  for key, value in fields.items():
    if key not in known:
      raise ValueError(f"model.{key} is not a field of {cls.__name__}; fields: {sorted(known)}")
    default = known[key].default
    if isinstance(value, dict) and dataclasses.is_dataclass(default):
      fields[key] = dataclasses.replace(default, **value)
  if "dtype" in known:
    fields["dtype"] = dtype
  return cls(quantizer=quantizer, **fields)


def build_discriminator(disc_config, dtype) -> nn.Module:
  """`discriminator.name` is a class of jaxtok.models.discriminators; the rest its fields."""
  fields = plain(disc_config)
  name = fields.pop("name")
  cls = getattr(discriminators, name, None)
  if not inspect.isclass(cls):
    raise ValueError(f"discriminator.name must be a class of jaxtok.models.discriminators, e.g. "
                     f"'PatchGANDiscriminator'; got {name!r}")
  return cls(dtype=dtype, **fields)


class Parts(NamedTuple):
  """Everything stateless built from a config."""

  tokenizer: Tokenizer
  discriminator: nn.Module | None  # None when loss.disc_weight == 0
  tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  lr: optax.Schedule
  d_lr: optax.Schedule


def build_parts(config) -> Parts:
  """The tokenizer (its quantizer from `quantizer`), discriminator and both optimizers."""
  dtype = DTYPES[config.train.compute_dtype]
  tokenizer = build_tokenizer(config.model, quantizers.build(plain(config.quantizer)), dtype)
  disc = (build_discriminator(config.discriminator, dtype) if config.loss.disc_weight > 0
          else None)
  steps = config.train.steps
  tx, lr = make_optimizer(total_steps=steps, **plain(config.optimizer))
  d_tx, d_lr = make_optimizer(total_steps=steps, **plain(config.d_optimizer))
  return Parts(tokenizer, disc, tx, d_tx, lr, d_lr)


def init_state(parts: Parts, config, key: jax.Array) -> TokenizerState:
  """A fresh state (parameters still in their nn.Partitioned boxes, for sharding)."""
  size = config.data.image_size
  images = jnp.zeros((1, size, size, 3), jnp.float32)
  k_model, k_disc, k_train = jax.random.split(key, 3)
  variables = dict(parts.tokenizer.init(
      {"params": k_model, "quantizer": k_model, "dropout": k_model}, images))
  params = variables.pop("params")
  d_params, d_state = {}, {}
  if parts.discriminator is not None:
    d_state = dict(parts.discriminator.init(k_disc, images))
    d_params = d_state.pop("params")
  return TokenizerState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(k_train), params=params,
      quantizer_state=variables.pop("quantizer_state", {}),
      ema_params=jax.tree.map(jnp.copy, params), opt_state=parts.tx.init(params),
      d_params=d_params, d_state=d_state, d_opt_state=parts.d_tx.init(d_params),
      skipped=jnp.zeros((), jnp.int32), skipped_in_a_row=jnp.zeros((), jnp.int32))
