"""The training states: one pytree per trainer holding everything a step reads or writes, so
that checkpointing it (plus the Grain iterator) resumes bit for bit.

Random keys are stored as raw key data (uint32) of the "rbg" PRNG: XLA compiles threefry
initializers of a few hundred parameters for tens of seconds on the CPU, rbg ones in a
fraction of that, and raw data checkpoints as a plain array on every Orbax version.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp

PRNG_IMPL = "rbg"

PyTree = Any


def make_key(seed: int) -> jax.Array:
  """A typed PRNG key of the trainer's implementation."""
  return jax.random.key(seed, impl=PRNG_IMPL)


def wrap_key(data: jax.Array) -> jax.Array:
  """Raw key data as stored in the state -> a typed key."""
  return jax.random.wrap_key_data(data, impl=PRNG_IMPL)


def zero() -> jax.Array:
  return jnp.zeros((), jnp.int32)


class TokenizerState(flax.struct.PyTreeNode):
  """Everything that changes during tokenizer training. Collections a configuration does not
  use (no discriminator, no stateful quantizer) are empty dicts, so the config alone fixes the
  structure."""

  step: jax.Array  # int32 scalar: completed steps, skipped ones included
  rng: jax.Array  # uint32 raw rbg key data; split once per step
  params: PyTree  # tokenizer "params"
  quantizer_state: PyTree  # tokenizer "quantizer_state" collection (EMA codebooks, counts)
  ema_params: PyTree  # exponential moving average of `params`
  opt_state: PyTree  # tokenizer optimizer state
  d_params: PyTree  # discriminator "params" ({} without a GAN)
  d_state: PyTree  # discriminator's other collections, e.g. {"batch_stats": ...}
  d_opt_state: PyTree  # discriminator optimizer state
  lecam: PyTree  # losses.LeCamEMA of the discriminator's mean logits (unused at weight 0)
  skipped: jax.Array  # int32: steps skipped for a non-finite loss or gradient, in total
  skipped_in_a_row: jax.Array  # int32: consecutive skipped steps ending at `step`


class GeneratorState(flax.struct.PyTreeNode):
  """Everything that changes during token-generator training (GPT, MaskGIT)."""

  step: jax.Array  # int32 scalar: completed steps, skipped ones included
  rng: jax.Array  # uint32 raw rbg key data; split once per step
  params: PyTree  # generator "params"
  ema_params: PyTree  # exponential moving average of `params`
  opt_state: PyTree
  skipped: jax.Array  # int32: steps skipped for a non-finite loss or gradient, in total
  skipped_in_a_row: jax.Array  # int32: consecutive skipped steps ending at `step`
