"""PSNR, SSIM (against scikit-image) and codebook usage."""

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from jaxtok.eval import metrics


def test_psnr_known_value_and_identity():
  x = np.zeros((2, 8, 8, 3), np.float32)
  y = x + np.array([0.1, 0.2], np.float32)[:, None, None, None]
  np.testing.assert_allclose(metrics.psnr(x, y), 10 * np.log10(4 / np.array([0.01, 0.04])),
                             rtol=1e-5)
  assert np.isinf(metrics.psnr(x, x)).all()
  with pytest.raises(ValueError, match="two NHWC batches of one shape"):
    metrics.psnr(x, y[:1])


def test_ssim_matches_scikit_image():
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (3, 24, 20, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  y[2] = x[2]
  expected = [structural_similarity(x[i], y[i], channel_axis=-1, data_range=2.0,
                                    gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False) for i in range(3)]
  np.testing.assert_allclose(metrics.ssim(jnp.asarray(x), jnp.asarray(y)), expected, atol=1e-5)
  assert expected[2] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="SSIM needs H, W >= 11"):
    metrics.ssim(x[:, :8, :8], y[:, :8, :8])


def test_code_counts_mask_and_usage():
  indices = jnp.array([[0, 0, 1], [3, 3, 3]])
  counts = metrics.code_counts(indices, 4, mask_B=jnp.array([True, False]))
  np.testing.assert_array_equal(counts, [2, 1, 0, 0])
  usage = metrics.usage_from_counts(np.array([1.0, 1.0, 0.0, 0.0]))
  assert usage == {"usage": 0.5, "perplexity": pytest.approx(2.0)}
  assert metrics.usage_from_counts(np.zeros(3)) == {"usage": 0.0, "perplexity": 0.0}
