"""The one output type every quantizer returns, and the maths they share.

Every quantizer in jaxtok/quantizers is a Linen module with:
  input_dim       property: the last dimension D of the z it takes;
  code_dim        property: the last dimension of `quantized` (= input_dim except for KL);
  codebook_size   property: how many distinct ids one index entry can take;
  __call__(z, *, train=False) -> QuantizerOutput;
  encode(z) -> int32 indices;  indices_to_codes(indices) -> [..., code_dim] codes, equal to
  `quantized` of the same z (in f32).
Random draws (quantize dropout, KL sampling, code restarts, data init) use the rng stream
"quantizer", only when train=True. Mutable state (EMA codebooks, usage counters) lives in the
"quantizer_state" collection: apply with mutable=["quantizer_state"] when training.

Shape letters used across jaxtok/quantizers: `...` any leading (batch, spatial or token) axes,
D the channel dimension of z, K the codebook size, L residual levels, G groups.
"""

import functools
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class QuantizerOutput(NamedTuple):
  """What every quantizer's `__call__` returns (a pytree: fine under jit, vmap, grad)."""

  quantized: jax.Array  # [..., D], z's dtype; straight-through (or other estimator) gradients
  indices: jax.Array  # int32: [...] for one codebook, [..., L] or [..., G] for several
  loss: jax.Array  # f32 scalar, already weighted: add it to the training loss as it is
  metrics: dict[str, jax.Array]  # f32 scalars; always "usage" and "perplexity"


def straight_through(z: jax.Array, q: jax.Array) -> jax.Array:
  """q in the forward pass, bit for bit, with an identity gradient to z and none to q.

  sg(q) + (z − sg(z)) adds an exact zero; the textbook z + sg(q − z) rounds twice and is an ulp
  off q for most z, which would break `indices_to_codes(encode(z)) == quantized`.
  (Bengio et al. 2013.)
  """
  return jax.lax.stop_gradient(q) + (z - jax.lax.stop_gradient(z))


def per_channel(v_D: jax.Array, ndim: int) -> jax.Array:
  """v [D] as [1, ..., 1, D] of rank `ndim`: explicit broadcasting over x [..., D]."""
  return jnp.reshape(v_D, (1,) * (ndim - 1) + (-1,))


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| along the last axis, in f32; an all-zero vector stays zero."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def _entropy_of_counts(counts: jax.Array) -> jax.Array:
  probs = counts / jnp.maximum(counts.sum(), 1.0)
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))


# Up to this many codes usage comes from an O(K) histogram; above it, from a sort of the ids.
DENSE_USAGE_LIMIT = 2**18


def code_usage_metrics(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
  """Fraction of the K codes hit by `indices`, and the perplexity exp(H) of their histogram.

  K <= 2^18: an O(K) histogram. Larger K (FSQ level products, LFQ/BSQ beyond 18 bits): the same
  two figures, exactly, from a sort of the N ids (O(N) memory); usage is then at most N / K.
  """
  ids = indices.reshape(-1)
  if codebook_size <= DENSE_USAGE_LIMIT:
    counts = jnp.zeros((codebook_size,), jnp.float32).at[ids].add(1.0)
    used = jnp.sum((counts > 0).astype(jnp.float32))
  elif ids.shape[0] == 0:
    counts, used = jnp.zeros((1,), jnp.float32), jnp.float32(0.0)
  else:
    ids = jnp.sort(ids)
    starts = jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]])
    run = jnp.cumsum(starts) - 1  # which distinct id each sorted entry belongs to
    counts = jax.ops.segment_sum(jnp.ones(ids.shape, jnp.float32), run,
                                 num_segments=ids.shape[0])
    used = jnp.sum(starts).astype(jnp.float32)
  return {"usage": used / float(codebook_size),
          "perplexity": jnp.exp(_entropy_of_counts(counts))}


def check_last_dim(z: jax.Array, expected: int, *, name: str = "z") -> None:
  """Raises a ValueError naming the expected and received channel dimension."""
  if z.ndim == 0 or z.shape[-1] != expected:
    raise ValueError(
        f"{name} must have last dimension D={expected}; got {name}.shape={tuple(z.shape)}")
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array; got dtype {z.dtype}")


def check_indices(indices: jax.Array, codebook_size: int, *, name: str = "indices") -> None:
  """Rejects float dtypes always, and out-of-range ids when `indices` is concrete.

  JAX gathers read out-of-range ids silently (a clamped or a NaN code), so a concrete check
  here is the only place a wrong id can be caught eagerly. Under jit the values are unknown
  and only the dtype is checked: `checked_indices` also catches them there.
  """
  dtype = jnp.asarray(indices).dtype if not hasattr(indices, "dtype") else indices.dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array (token ids); got dtype {dtype}")
  if isinstance(indices, jax.core.Tracer):
    return
  values = np.asarray(indices)
  if values.size and (values.min() < 0 or values.max() >= codebook_size):
    raise ValueError(
        f"{name} must lie in [0, {codebook_size}); got values in "
        f"[{values.min()}, {values.max()}]")


class IndexRangeWarning(RuntimeWarning):
  """Token or class ids out of range reached a jitted computation (and were clamped)."""


def checked_indices(indices, codebook_size: int, *, name: str = "indices") -> jax.Array:
  """`indices` as an int array whose ids all lie in [0, codebook_size), under jit too.

  Concrete ids are checked as by `check_indices` (ValueError) and returned unchanged. Traced
  ids (under jit, where nothing can raise on values) are clamped into range, and when any was
  out of range an `IndexRangeWarning` naming their count and the valid range is issued on the
  host (`jax.debug.callback`) as the computation runs: without this, gathers would silently
  read NaN or wrong codes. In-range ids pass unchanged, bit for bit, either way.

  A warning, not an exception: an exception in a debug callback reaches the caller as an
  opaque JaxRuntimeError (INTERNAL: CpuCallback error ...) after a logged traceback, and only
  at the next synchronisation on accelerators.
  """
  check_indices(indices, codebook_size, name=name)
  indices = jnp.asarray(indices)
  if not isinstance(indices, jax.core.Tracer) or indices.size == 0:
    return indices
  out_of_range = (indices < 0) | (indices >= codebook_size)
  jax.debug.callback(
      functools.partial(_warn_out_of_range, name=name, codebook_size=codebook_size),
      jnp.sum(out_of_range), jnp.min(indices), jnp.max(indices), indices.size)
  return jnp.clip(indices, 0, codebook_size - 1).astype(indices.dtype)


def _warn_out_of_range(count, low, high, size, *, name: str, codebook_size: int) -> None:
  # Under vmap the callback may see a batch of counts: report them together.
  count, low, high = int(np.sum(count)), int(np.min(low)), int(np.max(high))
  if count:
    warnings.warn(
        f"{name}: {count} of {int(np.sum(size))} ids lie outside [0, {codebook_size}) (values in "
        f"[{low}, {high}]); they were clamped into range, so the result is not what those "
        f"ids ask for", IndexRangeWarning, stacklevel=1)
