"""Dense layers and learned embedding tables carrying logical axis names (for sharding), and
the condition dropout of classifier-free guidance."""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def dense(features: int, name: str, dtype, names=(None, "embed")) -> nn.Dense:
  """A Dense layer whose kernel has logical axes `names` (in, out) and bias `names[-1]`."""
  return nn.Dense(features, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(
                      nn.initializers.lecun_normal(), names),
                  bias_init=nn.with_logical_partitioning(
                      nn.initializers.zeros_init(), names[-1:]))


def embedding_param(module: nn.Module, name: str, shape: Sequence[int], stddev: float):
  """A learned table [..., E] of `module`, drawn from N(0, stddev^2); last axis "embed"."""
  names = (None,) * (len(shape) - 1) + ("embed",)
  return module.param(
      name, nn.with_logical_partitioning(nn.initializers.normal(stddev), names), tuple(shape))


def condition_dropout(module: nn.Module, drop_cond, batch: int, rate: float,
                      train: bool) -> jax.Array:
  """bool [B], True where the null condition replaces a sample's: where `drop_cond` is (None:
  nowhere) and, in training, each with probability `rate` (classifier-free guidance's
  condition dropout, drawn from `module`'s "dropout" rng)."""
  drop_B = (jnp.zeros((batch,), jnp.bool_) if drop_cond is None
            else jnp.asarray(drop_cond, jnp.bool_))
  if train and rate > 0:
    drop_B = drop_B | (jax.random.uniform(module.make_rng("dropout"), (batch,)) < rate)
  return drop_B
