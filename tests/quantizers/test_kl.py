"""KLQuantizer: KL against NumPy, sampling statistics, deterministic mode, no discrete ids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers.kl import KLQuantizer


def test_kl_matches_numpy_with_the_logvar_clamp(maybe_jit):
  mean = np.array([[0.0, 1.5, -2.0], [0.3, 0.0, 4.0]], np.float32)
  logvar = np.array([[0.0, -45.0, 25.0], [np.log(0.5), 1.0, -2.0]], np.float32)
  out = maybe_jit(KLQuantizer(3, kl_weight=0.1).apply)({}, jnp.concatenate([mean, logvar], -1))
  lv = np.clip(logvar.astype(np.float64), -30, 20)
  kl = np.mean(0.5 * (mean**2 + np.exp(lv) - 1 - lv))
  np.testing.assert_allclose(out.metrics["kl"], kl, rtol=1e-6)
  np.testing.assert_allclose(out.loss, 0.1 * kl, rtol=1e-6)
  np.testing.assert_allclose(out.metrics["std"], np.mean(np.exp(lv / 2)), rtol=1e-6)
  np.testing.assert_array_equal(out.quantized, mean)  # evaluation: the mean


def test_training_samples_have_the_posterior_mean_and_variance():
  q = KLQuantizer(2)
  z = jnp.array([0.5, -1.0, np.log(0.25), np.log(4.0)], jnp.float32)
  keys = jax.random.split(jax.random.key(0), 4000)
  sample = jax.jit(jax.vmap(
      lambda k: q.apply({}, z, train=True, rngs={"quantizer": k}).quantized))(keys)
  sample, n, var = np.asarray(sample, np.float64), len(keys), np.array([0.25, 4.0])
  assert np.all(np.abs(sample.mean(0) - [0.5, -1.0]) < 4 * np.sqrt(var / n))  # 4 standard errors
  np.testing.assert_allclose(sample.var(0), var, rtol=0.1)
  assert len(np.unique(sample[:, 0])) > 0.99 * n  # every key draws anew (f32 ties are rare)


def test_deterministic_mode_returns_the_mean_without_loss(maybe_jit):
  q = KLQuantizer(2, kl_weight=1.0, deterministic=True)
  z = jnp.array([[0.5, -1.0, 1.0, 2.0]])
  out = maybe_jit(lambda x: q.apply({}, x, train=True))(z)  # needs no rng
  np.testing.assert_array_equal(out.quantized, [[0.5, -1.0]])
  assert float(out.loss) == 0.0 and float(out.metrics["kl"]) > 0.0


def test_protocol_has_no_discrete_ids():
  q = KLQuantizer(4)
  assert (q.input_dim, q.code_dim, q.codebook_size) == (8, 4, 0)
  z = jax.random.normal(jax.random.key(1), (2, 3, 8)).astype(jnp.bfloat16)
  out = jax.jit(lambda x: q.apply({}, x, train=True, rngs={"quantizer": jax.random.key(2)}))(z)
  assert out.quantized.dtype == jnp.bfloat16 and out.quantized.shape == (2, 3, 4)
  assert out.indices.shape == (2, 3, 0) and out.indices.dtype == jnp.int32
  assert "usage" not in out.metrics and "perplexity" not in out.metrics
  with pytest.raises(TypeError, match="continuous"):
    q.encode(z)
  with pytest.raises(TypeError, match="continuous"):
    q.indices_to_codes(jnp.zeros((2,), jnp.int32))


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match=r"D=8.*\(2, 4\)"):
    KLQuantizer(4).apply({}, jnp.zeros((2, 4)))
  with pytest.raises(Exception, match="quantizer"):  # training samples need the rng stream
    KLQuantizer(4).apply({}, jnp.zeros((2, 8)), train=True)
