"""FSQ: Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple"."""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.quantizers.base import (
    QuantizerOutput, check_indices, check_last_dim, code_usage_metrics, per_channel,
    straight_through)

# Index maths is int32; ids must fit in [0, 2^31).
MAX_CODEBOOK_SIZE = 2**31


def _levels_f32(levels: Sequence[int], ndim: int) -> jax.Array:
  return per_channel(jnp.asarray(levels, jnp.float32), ndim)


def _half_width(levels: Sequence[int], ndim: int) -> jax.Array:
  # L // 2: codes are k / (L // 2), k in [-(L//2), (L-1)//2]; even L is one step short of +1.
  return per_channel(jnp.asarray([l // 2 for l in levels], jnp.float32), ndim)


def _basis(levels: Sequence[int], ndim: int) -> jax.Array:
  # Mixed radix: digit 0 is the least significant, digit i weighs prod(levels[:i]).
  return per_channel(
      jnp.asarray([math.prod(levels[:i]) for i in range(len(levels))], jnp.int32), ndim)


def validate_levels(levels: Sequence[int]) -> tuple[int, ...]:
  """Returns `levels` as a tuple of ints, or raises if a level or their product is unusable."""
  levels = tuple(int(l) for l in levels)
  if not levels or any(l < 2 for l in levels):
    raise ValueError(f"levels must be a non-empty sequence of ints >= 2; got {levels}")
  if math.prod(levels) > MAX_CODEBOOK_SIZE:
    raise ValueError(f"prod(levels) must be <= 2^31 so ids fit in int32; got levels={levels} "
                     f"with prod {math.prod(levels)}")
  return levels


def bound(z: jax.Array, levels: Sequence[int], eps: float = 1e-3) -> jax.Array:
  """Squashes z [..., len(levels)] so that rounding yields exactly L_i values per channel.

  bound(z) = tanh(z + shift) * h - offset, with h = (L - 1)(1 - eps) / 2, offset = 0 for odd L
  and 1/2 for even L, shift = tan(offset / h): the paper's listing (Appendix A.1). Its range is
  (-h - offset, h - offset), so round() gives the integers -(L//2) ... (L-1)//2. `tan` (not
  atanh, which would centre bound(0) exactly) is kept as published; atanh is undefined at L=2.
  f32 in and out.
  """
  z = z.astype(jnp.float32)
  levels_f = _levels_f32(levels, z.ndim)
  half_l = (levels_f - 1.0) * (1.0 - eps) / 2.0
  offset = jnp.where(levels_f % 2 == 1, 0.0, 0.5)
  shift = jnp.tan(offset / half_l)
  return jnp.tanh(z + shift) * half_l - offset


def fsq_quantize(z: jax.Array, levels: Sequence[int], eps: float = 1e-3) -> jax.Array:
  """FSQ codes of z [..., len(levels)] in [-1, 1], f32, with a straight-through round.

  The gradient is that of bound(z) / (L // 2): identity through the rounding only. The
  straight-through sum is taken on the integer grid, where it is exact (|round(x) - x| <= 1/2),
  so the codes equal `indices_to_codes(codes_to_indices(codes))` bit for bit.
  """
  bounded = bound(z, levels, eps)
  return straight_through(bounded, jnp.round(bounded)) / _half_width(levels, bounded.ndim)


def codes_to_indices(codes: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Mixed-radix ids [...] int32 of codes [..., len(levels)] (values k / (L // 2))."""
  half_width = _half_width(levels, codes.ndim)
  digits = jnp.round(codes.astype(jnp.float32) * half_width + half_width).astype(jnp.int32)
  return jnp.sum(digits * _basis(levels, codes.ndim), axis=-1, dtype=jnp.int32)


def indices_to_codes(indices: jax.Array, levels: Sequence[int]) -> jax.Array:
  """Codes [..., len(levels)] f32 of int ids [...]; integer maths, exact for every id < 2^31."""
  indices = jnp.asarray(indices).astype(jnp.int32)[..., None]
  digits = (indices // _basis(levels, indices.ndim)) % per_channel(
      jnp.asarray(levels, jnp.int32), indices.ndim)
  half_width = _half_width(levels, indices.ndim)
  return (digits.astype(jnp.float32) - half_width) / half_width


class FSQ(nn.Module):
  """Finite scalar quantization: bound each channel, round it, no codebook and no loss.

  z [..., D] with D = len(levels) -> quantized [..., D] in z's dtype (maths in f32) with codes
  k / (L_i // 2) in [-1, 1]; indices [...] int32, mixed radix with channel 0 least significant
  (index = sum_i digit_i * prod(levels[:i]), digit_i = code_i * (L_i // 2) + L_i // 2).
  loss is 0.0: FSQ needs no auxiliary loss. metrics: "usage" and "perplexity" over all
  prod(levels) codes (see `base.code_usage_metrics` for K > 2^18).

  The paper's recommended levels: 2^8 -> (8, 6, 5), 2^10 -> (8, 5, 5, 5),
  2^12 -> (7, 5, 5, 5, 5), 2^14 -> (8, 8, 8, 6, 5), 2^16 -> (8, 8, 8, 5, 5, 5).
  """

  levels: Sequence[int]  # levels per channel, each >= 2; codebook size is their product
  eps: float = 1e-3  # keeps tanh's range strictly inside the outermost rounding boundary

  def __post_init__(self):
    object.__setattr__(self, "levels", validate_levels(self.levels))
    super().__post_init__()

  @property
  def input_dim(self) -> int:
    return len(self.levels)

  @property
  def code_dim(self) -> int:
    return len(self.levels)

  @property
  def codebook_size(self) -> int:
    return math.prod(self.levels)

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    del train  # FSQ behaves the same in training and evaluation
    check_last_dim(z, self.input_dim)
    codes = fsq_quantize(z, self.levels, self.eps)
    indices = codes_to_indices(jax.lax.stop_gradient(codes), self.levels)
    metrics = {k: v.astype(jnp.float32)
               for k, v in code_usage_metrics(indices, self.codebook_size).items()}
    return QuantizerOutput(quantized=codes.astype(z.dtype), indices=indices,
                           loss=jnp.zeros((), jnp.float32), metrics=metrics)

  def encode(self, z: jax.Array) -> jax.Array:
    """Token ids [...] int32 of z [..., D]."""
    check_last_dim(z, self.input_dim)
    return codes_to_indices(jax.lax.stop_gradient(fsq_quantize(z, self.levels, self.eps)),
                            self.levels)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes [..., D] f32 of ids [...]; equal to `quantized` of the z that gave the ids."""
    check_indices(indices, self.codebook_size)
    return indices_to_codes(indices, self.levels)
