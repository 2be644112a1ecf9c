"""Reconstruction losses: L1, L2 and the LPIPS perceptual loss, all means in f32.

Every function upcasts its inputs to f32 first, so bf16 runs get f32 loss maths.
"""

import jax
import jax.numpy as jnp

from jaxtok.models.lpips import LPIPS


def _f32_pair(x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  if x.shape != y.shape:
    raise ValueError(f"losses need equal shapes; got {tuple(x.shape)} and {tuple(y.shape)}")
  return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


def l1_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """mean |x - y| over every element (taming's `abs` reconstruction loss), f32 scalar."""
  x, y = _f32_pair(x, y)
  return jnp.mean(jnp.abs(x - y))


def l2_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """mean (x - y)^2 over every element (PyTorch `mse_loss`, LlamaGen's "l2"), f32 scalar."""
  x, y = _f32_pair(x, y)
  return jnp.mean(jnp.square(x - y))


def perceptual_loss(lpips_params: dict, x_BHWC: jax.Array, y_BHWC: jax.Array) -> jax.Array:
  """Batch mean of LPIPS-VGG16 distances, f32 scalar; gradients flow to both images.

  lpips_params come from `jaxtok.models.lpips.load_lpips_params()`; they are constants, not
  trained: keep them out of the optimiser's params.
  """
  return jnp.mean(LPIPS().apply(lpips_params, x_BHWC, y_BHWC))
