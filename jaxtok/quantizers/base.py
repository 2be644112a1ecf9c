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
  """Returns q in the forward pass with an identity gradient to z (Bengio et al. 2013)."""
  return z + jax.lax.stop_gradient(q - z)


def code_usage_metrics(indices: jax.Array, codebook_size: int) -> dict[str, jax.Array]:
  """Fraction of the K codes hit by `indices`, and the perplexity exp(H) of their histogram.

  Memory is O(K): fine up to 2^18 codes. Quantizers whose effective codebook is a product
  of smaller ones (LFQ/BSQ bits, FSQ levels) may pass per-factor histograms instead.
  """
  counts = jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].add(1.0)
  probs = counts / jnp.maximum(counts.sum(), 1.0)
  entropy = -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0))
  return {"usage": jnp.mean((counts > 0).astype(jnp.float32)), "perplexity": jnp.exp(entropy)}


def check_last_dim(z: jax.Array, expected: int, *, name: str = "z") -> None:
  """Raises a ValueError naming the expected and received channel dimension."""
  if z.ndim == 0 or z.shape[-1] != expected:
    raise ValueError(
        f"{name} must have last dimension D={expected}; got {name}.shape={tuple(z.shape)}")
  if not jnp.issubdtype(z.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating-point array; got dtype {z.dtype}")


def check_indices(indices: jax.Array, codebook_size: int, *, name: str = "indices") -> None:
  """Rejects float dtypes always, and out-of-range ids when `indices` is concrete.

  JAX gathers clamp out-of-range ids silently, so a concrete check here is the only place a
  wrong id can be caught. Under jit the values are unknown and only the dtype is checked.
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
