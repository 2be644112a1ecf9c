"""Image conversions between uint8 pixels and the models' [-1, 1] floats, and image grids.

Models see NHWC float in [-1, 1]; files and pictures hold uint8. Both directions live here so
that every caller rounds and clips the same way.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> f32 [-1, 1]; float images pass through as f32."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


def to_uint8(images: jax.Array) -> jax.Array:
  """[-1, 1] floats -> uint8, clipped and rounded (works on jax and NumPy arrays, under jit)."""
  return jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def grid(images_BHWC: np.ndarray, *, columns: int | None = None, gap: int = 2) -> np.ndarray:
  """uint8 images in rows of `columns` (default: a near-square grid), `gap` white pixels apart."""
  images_BHWC = np.asarray(images_BHWC)
  n, h, w, c = images_BHWC.shape
  cols = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, np.uint8)
  for i, image in enumerate(images_BHWC):
    r, col = divmod(i, cols)
    out[r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = image
  return out


def comparison_grid(top_BHWC: np.ndarray, bottom_BHWC: np.ndarray, gap: int = 2) -> np.ndarray:
  """Two rows, e.g. originals over their reconstructions: [2H + gap, BW + (B - 1) gap, C]."""
  top_BHWC = np.asarray(top_BHWC)
  return grid(np.concatenate([top_BHWC, np.asarray(bottom_BHWC)]), columns=len(top_BHWC),
              gap=gap)
