"""Sampling maths of the generators against NumPy: top-k, top-p, CFG, temperature, checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.generators import sampling
from jaxtok.models.generators.sampling import SamplingConfig


def _logits(seed, shape=(3, 11)):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 2


def _numpy_top_k(logits, k):
  kth = np.sort(logits, axis=-1)[..., -k][..., None]
  return np.where(logits < kth, -np.inf, logits)


def _numpy_top_p(logits, p):
  """Keep the fewest most likely tokens whose probability sums to >= p (row by row)."""
  out = np.full_like(logits, -np.inf)
  for row, row_logits in enumerate(logits):
    probs = np.exp(row_logits - row_logits.max())
    probs /= probs.sum()
    total = 0.0
    for i in np.argsort(-row_logits, kind="stable"):
      out[row, i] = row_logits[i]
      total += probs[i]
      if total >= p:
        break
  return out


def test_top_k_keeps_the_k_largest_and_ties_with_the_kth():
  logits = _logits(0)
  for k in (1, 3, 10):
    np.testing.assert_array_equal(sampling.top_k_logits(logits, k), _numpy_top_k(logits, k))
    assert (np.isfinite(sampling.top_k_logits(logits, k)).sum(-1) == k).all()
  np.testing.assert_array_equal(sampling.top_k_logits(logits, 0), logits)  # disabled
  np.testing.assert_array_equal(sampling.top_k_logits(logits, 11), logits)
  tied = np.array([[1.0, 3.0, 2.0, 3.0, 0.0]], np.float32)
  assert np.isfinite(sampling.top_k_logits(tied, 1)).sum() == 2  # both 3.0 survive


def test_top_p_equals_numpy_nucleus():
  logits = _logits(1, (6, 13))
  for p in (0.05, 0.3, 0.75, 0.95):
    np.testing.assert_array_equal(sampling.top_p_logits(logits, p), _numpy_top_p(logits, p))
  np.testing.assert_array_equal(sampling.top_p_logits(logits, 1.0), logits)
  # A tiny p still keeps the most likely token of every row.
  kept = np.isfinite(sampling.top_p_logits(logits, 1e-6))
  np.testing.assert_array_equal(kept, logits == logits.max(-1, keepdims=True))


def test_cfg_formula_and_schedules_equal_numpy():
  cond, uncond = _logits(2), _logits(3)
  np.testing.assert_allclose(sampling.cfg_logits(cond, uncond, 2.5),
                             uncond + 2.5 * (cond - uncond), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(sampling.cfg_logits(cond, uncond, 1.0), cond, atol=1e-6)
  assert float(sampling.cfg_scale_at(5, 10, 3.0, "constant")) == 3.0
  ramp = [float(sampling.cfg_scale_at(s, 4, 3.0, "linear")) for s in range(4)]
  np.testing.assert_allclose(ramp, [1.5, 2.0, 2.5, 3.0], rtol=1e-6)
  # guided_logits splits a [cond; uncond] batch.
  both = np.concatenate([cond, uncond])
  config = SamplingConfig(cfg_scale=2.0)
  np.testing.assert_allclose(sampling.guided_logits(both, 0, 4, config),
                             uncond + 2.0 * (cond - uncond), rtol=1e-6, atol=1e-6)


def test_draws_follow_softmax_with_temperature_and_respect_filters():
  logits = np.array([1.0, 0.0, -1.0, 2.0, 0.5], np.float32)
  draw = jax.jit(sampling.sample_logits, static_argnames="config")
  many = np.broadcast_to(logits, (20000, 5))
  for temperature in (0.5, 2.0):
    ids = np.asarray(draw(jax.random.key(0), many, SamplingConfig(temperature=temperature)))
    expected = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    np.testing.assert_allclose(np.bincount(ids, minlength=5) / ids.size, expected, atol=0.015)
  ids = np.asarray(draw(jax.random.key(1), many, SamplingConfig(top_k=2)))
  assert set(np.unique(ids)) == {0, 3}
  ids = np.asarray(draw(jax.random.key(2), many, SamplingConfig(top_p=0.5)))
  assert set(np.unique(ids)) == {3}  # p(id 3) = 0.56 >= 0.5; with id 0: 0.77
  ids = np.asarray(draw(jax.random.key(3), many, SamplingConfig(top_p=0.6)))
  assert set(np.unique(ids)) == {0, 3}
  # Greedy: temperature 0, or top_k = 1 at any temperature.
  rows = _logits(4, (7, 9))
  for config in (SamplingConfig(temperature=0.0), SamplingConfig(top_k=1, temperature=3.0)):
    np.testing.assert_array_equal(draw(jax.random.key(5), rows, config), rows.argmax(-1))
  assert draw(jax.random.key(5), rows.astype(jnp.bfloat16), SamplingConfig()).dtype == jnp.int32


def test_bad_sampling_arguments_are_clear_errors():
  with pytest.raises(ValueError, match="temperature must be"):
    SamplingConfig(temperature=-1.0)
  with pytest.raises(ValueError, match="top_k must be an integer >= 0"):
    SamplingConfig(top_k=-2)
  with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\] .*got 0.0"):
    SamplingConfig(top_p=0.0)
  with pytest.raises(ValueError, match="cfg_schedule must be"):
    SamplingConfig(cfg_schedule="cosine")
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\).*got values in \[3, 10\]"):
    sampling.check_labels(np.array([3, 10]), 10)
  with pytest.raises(TypeError, match="labels must be integer class ids; got dtype float32"):
    sampling.check_labels(np.array([1.0], np.float32), 10)
  with pytest.raises(ValueError, match=r"labels must be a 1-D array .* got shape \(2, 1\)"):
    sampling.check_labels(np.zeros((2, 1), np.int32), 10)
  with pytest.raises(ValueError, match=r"tokens must have shape \[B, 2, 3\].*got \(1, 6\)"):
    sampling.check_token_grid(np.zeros((1, 6), np.int32), (2, 3), 8)
  with pytest.raises(ValueError, match=r"tokens must lie in \[0, 8\); got values in \[8, 8\]"):
    sampling.check_token_grid(np.full((1, 2, 3), 8, np.int32), (2, 3), 8)
  with pytest.raises(ValueError, match="needs labels"):
    sampling.resolve_batch(None, 4, 10, SamplingConfig(cfg_scale=2.0))
  with pytest.raises(ValueError, match="num_samples=3 disagrees"):
    sampling.resolve_batch(np.array([1, 2]), 3, 10, SamplingConfig())
  with pytest.raises(ValueError, match="num_samples must be a positive integer"):
    sampling.resolve_batch(None, None, 10, SamplingConfig())
  assert sampling.resolve_batch(np.array([1, 2]), None, 10, SamplingConfig()) == 2
