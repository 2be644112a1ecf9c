"""Reconstruction metrics: PSNR, SSIM, and codebook usage over a whole evaluation set.

Images are NHWC float in [-1, 1] (data_range 2) unless `data_range` says otherwise; every
function returns one value per image (f32 [B]) so batches can be padded and masked, and works
under jit. LPIPS lives in `jaxtok.models.lpips`.
"""

import jax
import jax.numpy as jnp
import numpy as np

# SSIM constants of Wang et al. 2004 and the Gaussian window they use (sigma 1.5, 11 taps).
_K1, _K2 = 0.01, 0.03
_SIGMA = 1.5
_RADIUS = 5  # scipy's truncate=3.5: int(3.5 * 1.5 + 0.5)


def _check_pair(x: jax.Array, y: jax.Array) -> None:
  if x.shape != y.shape or x.ndim != 4:
    raise ValueError(f"images must be two NHWC batches of one shape; got {tuple(x.shape)} and "
                     f"{tuple(y.shape)}")


def psnr(x_BHWC: jax.Array, y_BHWC: jax.Array, *, data_range: float = 2.0) -> jax.Array:
  """Peak signal-to-noise ratio per image, in dB: 10 log10(range^2 / MSE). Identical images
  give inf."""
  _check_pair(x_BHWC, y_BHWC)
  x, y = jnp.asarray(x_BHWC, jnp.float32), jnp.asarray(y_BHWC, jnp.float32)
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  return 10.0 * jnp.log10(data_range**2 / mse)


def _gaussian_window() -> np.ndarray:
  taps = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
  window = np.exp(-0.5 * (taps / _SIGMA) ** 2)
  return (window / window.sum()).astype(np.float32)


def _filter_valid(x_BHWC: jax.Array) -> jax.Array:
  """Separable Gaussian filter, 'valid' region only: [B, H, W, C] -> [B, H-10, W-10, C]."""
  w = jnp.asarray(_gaussian_window())
  n = w.shape[0]
  h, wd = x_BHWC.shape[1], x_BHWC.shape[2]
  rows = sum(w[i] * x_BHWC[:, i:h - n + 1 + i] for i in range(n))
  return sum(w[i] * rows[:, :, i:wd - n + 1 + i] for i in range(n))


def ssim(x_BHWC: jax.Array, y_BHWC: jax.Array, *, data_range: float = 2.0) -> jax.Array:
  """Structural similarity per image (Wang et al. 2004): Gaussian window sigma 1.5, K1 0.01,
  K2 0.03, population covariances, the mean over the valid region and over channels.

  Equals `skimage.metrics.structural_similarity(x, y, channel_axis=-1, data_range=...,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)` for each image. H and W must
  be at least 11.
  """
  _check_pair(x_BHWC, y_BHWC)
  if min(x_BHWC.shape[1:3]) < 2 * _RADIUS + 1:
    raise ValueError(f"SSIM needs H, W >= {2 * _RADIUS + 1} (its 11x11 window); got "
                     f"{tuple(x_BHWC.shape)}")
  x, y = jnp.asarray(x_BHWC, jnp.float32), jnp.asarray(y_BHWC, jnp.float32)
  c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
  mu_x, mu_y = _filter_valid(x), _filter_valid(y)
  var_x = _filter_valid(x * x) - mu_x * mu_x
  var_y = _filter_valid(y * y) - mu_y * mu_y
  cov = _filter_valid(x * y) - mu_x * mu_y
  s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
       / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
  return jnp.mean(s, axis=(1, 2, 3))


def code_counts(indices: jax.Array, codebook_size: int, mask_B: jax.Array | None = None
                ) -> jax.Array:
  """How often each of the K codes occurs in int `indices` [B, ...] (f32 [K]); rows with
  mask_B False (padding) are not counted."""
  weights = jnp.ones(indices.shape, jnp.float32)
  if mask_B is not None:
    weights = weights * mask_B.reshape((-1,) + (1,) * (indices.ndim - 1)).astype(jnp.float32)
  return jnp.zeros((codebook_size,), jnp.float32).at[indices.reshape(-1)].add(weights.reshape(-1))


def usage_from_counts(counts_K) -> dict[str, float]:
  """Codebook usage (fraction of codes used at least once) and perplexity exp(H) of the code
  histogram, from accumulated counts."""
  counts = np.asarray(counts_K, np.float64)
  total = counts.sum()
  if total <= 0:
    return {"usage": 0.0, "perplexity": 0.0}
  p = counts[counts > 0] / total
  return {"usage": float(np.mean(counts > 0)), "perplexity": float(np.exp(-np.sum(p * np.log(p))))}
