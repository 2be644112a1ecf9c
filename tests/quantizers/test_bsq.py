"""BSQ: codes ±1/√d on the unit sphere, LFQ's ids, gradients through the normalization."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers import lfq
from jaxtok.quantizers.base import l2_normalize
from jaxtok.quantizers.bsq import BSQ


def test_codes_are_unit_vectors_of_scale_one_over_sqrt_d_with_lfq_ids(maybe_jit):
  d = 9
  z = 3.0 * jax.random.normal(jax.random.key(0), (4, 6, d))
  q = BSQ(d)
  out = maybe_jit(q.apply)({}, z)
  zn = np.asarray(z)
  np.testing.assert_array_equal(out.quantized, np.where(zn > 0, 1, -1).astype(np.float32)
                                / np.float32(np.sqrt(d)))
  np.testing.assert_allclose(np.linalg.norm(out.quantized, axis=-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(out.indices, np.sum((zn > 0) << np.arange(d), axis=-1))
  ids = maybe_jit(q.encode)(z)
  np.testing.assert_array_equal(ids, out.indices)
  np.testing.assert_array_equal(maybe_jit(q.indices_to_codes)(ids), out.quantized)


def test_gradient_is_identity_through_binarization_after_normalization():
  z = jax.random.normal(jax.random.key(1), (3, 4))
  w = jax.random.normal(jax.random.key(2), (3, 4))
  got = jax.jit(jax.grad(lambda x: jnp.sum(w * BSQ(4).apply({}, x).quantized)))(z)
  want = jax.grad(lambda x: jnp.sum(w * l2_normalize(x)))(z)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_losses_follow_the_reference_definitions(maybe_jit):
  d, temperature = 4, 0.2
  q = BSQ(d, commitment_weight=0.5, entropy_weight=0.3, diversity_gamma=2.0,
          temperature=temperature, entropy_group_bits=d)
  z = jax.random.normal(jax.random.key(3), (10, d))
  out = maybe_jit(q.apply)({}, z)
  u = np.asarray(z, np.float64) / np.linalg.norm(z, axis=-1, keepdims=True)
  codes = np.where((np.arange(2**d)[:, None] >> np.arange(d)) & 1, 1.0, -1.0) / np.sqrt(d)
  commitment = np.mean(np.sum((u - np.where(u > 0, 1, -1) / np.sqrt(d)) ** 2, axis=-1))
  logits = -np.sum((u[:, None] - codes) ** 2, axis=-1) / temperature  # one group: exact
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  per_sample = np.mean(-np.sum(p * np.log(p), -1))
  p_bar = p.mean(0)
  codebook = -np.sum(p_bar * np.log(p_bar))
  m = out.metrics
  np.testing.assert_allclose(m["commitment"], commitment, rtol=1e-5)
  np.testing.assert_allclose(m["per_sample_entropy"], per_sample, rtol=1e-5)
  np.testing.assert_allclose(m["codebook_entropy"], codebook, rtol=1e-5)
  np.testing.assert_allclose(out.loss, 0.5 * commitment + 0.3 * (per_sample - 2.0 * codebook),
                             rtol=1e-5)


def test_18_bits_bf16_and_vmap():
  q = BSQ(18)
  z = jax.random.normal(jax.random.key(4), (2, 8, 18)).astype(jnp.bfloat16)
  out = jax.jit(q.apply)({}, z)
  assert out.quantized.dtype == jnp.bfloat16 and out.indices.dtype == jnp.int32
  assert np.isfinite(float(out.loss))
  np.testing.assert_array_equal(out.indices, jax.jit(lfq.codes_to_indices)(z))
  ids = jax.jit(jax.vmap(lambda x: q.apply({}, x).indices))(z)
  np.testing.assert_array_equal(ids, out.indices)
  assert int(jax.jit(q.encode)(jnp.ones((18,), jnp.bfloat16))) == 2**18 - 1


def test_errors_name_the_problem():
  q = BSQ(8)
  with pytest.raises(ValueError, match=r"D=8.*\(3, 7\)"):
    q.apply({}, jnp.zeros((3, 7)))
  with pytest.raises(TypeError, match="integer"):
    q.indices_to_codes(jnp.array([1.0]))
  with pytest.raises(ValueError, match=r"\[0, 256\)"):
    q.indices_to_codes(jnp.array([-1]))
