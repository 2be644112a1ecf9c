"""Dense layers and learned embedding tables carrying logical axis names (for sharding)."""

from collections.abc import Sequence

import flax.linen as nn


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
