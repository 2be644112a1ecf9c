"""FSQ: bounding and rounding against NumPy, exact codebook enumeration, round trips, errors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers import base, fsq
from jaxtok.quantizers.fsq import FSQ


def _np_bound(z, levels, eps=1e-3):
  levels = np.asarray(levels, np.float64)
  half_l = (levels - 1) * (1 - eps) / 2
  offset = np.where(levels % 2 == 1, 0.0, 0.5)
  return np.tanh(z + np.tan(offset / half_l)) * half_l - offset


def test_bound_and_round_match_numpy_on_a_grid():
  levels = (2, 3, 4, 5, 7, 8)
  z = np.repeat(np.linspace(-6, 6, 601)[:, None], len(levels), axis=1)
  ref = _np_bound(z, levels)
  np.testing.assert_allclose(fsq.bound(jnp.asarray(z, jnp.float32), levels), ref, atol=2e-6)
  half_width = np.array([l // 2 for l in levels])
  codes = np.asarray(jax.jit(fsq.fsq_quantize, static_argnums=1)(jnp.asarray(z, jnp.float32),
                                                                 levels))
  away_from_ties = np.abs(ref - np.floor(ref) - 0.5) > 1e-4
  expected_codes = (np.round(ref) / half_width).astype(np.float32)
  np.testing.assert_array_equal(codes[away_from_ties], expected_codes[away_from_ties])
  for i, l in enumerate(levels):
    # Even levels: the half-level offset gives L values -(L//2) ... L//2 - 1, i.e. [-1, 1).
    expected = ((np.arange(l) - l // 2) / (l // 2)).astype(np.float32)
    np.testing.assert_array_equal(np.unique(codes[:, i]), expected)


def test_all_codes_enumerate_the_codebook_in_mixed_radix_order():
  levels = (3, 4, 2, 5)
  q = FSQ(levels)
  codes = np.asarray(jax.jit(q.indices_to_codes)(jnp.arange(q.codebook_size)))
  digits = [np.arange(l) for l in levels]
  # itertools.product varies its last factor fastest; channel 0 is the least significant digit.
  ref = np.array([d[::-1] for d in itertools.product(*digits[::-1])], np.float64)
  half_width = np.array([l // 2 for l in levels])
  np.testing.assert_array_equal(codes, (ref - half_width) / half_width)
  assert len(np.unique(codes, axis=0)) == q.codebook_size == 120
  np.testing.assert_array_equal(fsq.codes_to_indices(codes, levels), np.arange(120))


def test_index_round_trip_is_exact_at_and_beyond_2_18_codes():
  levels = (8,) * 6  # 2^18 codes: every one round-trips
  round_trip = jax.jit(lambda i, levels: fsq.codes_to_indices(fsq.indices_to_codes(i, levels),
                                                               levels), static_argnums=1)
  ids = jnp.arange(2**18, dtype=jnp.int32)
  np.testing.assert_array_equal(round_trip(ids, levels), ids)
  for levels in [(8,) * 8 + (7, 5), (2,) * 31]:  # 2^24·35 and 2^31 codes
    k = math.prod(levels)
    ids = jnp.array([0, 1, k // 3, k // 2 + 1, k - 2, k - 1], jnp.int32)
    np.testing.assert_array_equal(round_trip(ids, levels), ids)
  with pytest.raises(ValueError, match="2\\^31"):
    FSQ((2,) * 32)
  with pytest.raises(ValueError, match=">= 2"):
    FSQ((4, 1))


def test_call_round_trips_with_or_without_jit_and_under_vmap(maybe_jit):
  q = FSQ((8, 5, 5, 5))
  z = 2.0 * jax.random.normal(jax.random.key(0), (3, 5, 4))
  out = maybe_jit(q.apply)({}, z)
  assert out.quantized.dtype == jnp.float32 and out.indices.dtype == jnp.int32
  assert out.indices.shape == (3, 5) and float(out.loss) == 0.0
  ids = maybe_jit(q.encode)(z)
  np.testing.assert_array_equal(ids, out.indices)
  np.testing.assert_array_equal(maybe_jit(q.indices_to_codes)(ids), out.quantized)
  vmapped = jax.jit(jax.vmap(lambda x: q.apply({}, x).indices))(z)
  np.testing.assert_array_equal(vmapped, out.indices)


def test_straight_through_gradient_is_identity_through_rounding(maybe_jit):
  levels = (4, 5, 8)
  z = jax.random.normal(jax.random.key(1), (6, 3))
  w = jax.random.normal(jax.random.key(2), (6, 3))
  half_width = jnp.array([[2.0, 2.0, 4.0]])
  got = maybe_jit(jax.grad(lambda x: jnp.sum(w * FSQ(levels).apply({}, x).quantized)))(z)
  want = jax.jit(jax.grad(lambda x: jnp.sum(w * fsq.bound(x, levels) / half_width)))(z)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_bf16_input_keeps_dtype_and_does_f32_maths():
  q = FSQ((7, 5, 5, 5))
  z = jax.random.normal(jax.random.key(3), (4, 4)).astype(jnp.bfloat16)
  out, ref = jax.jit(lambda x: (q.apply({}, x), q.apply({}, x.astype(jnp.float32))))(z)
  assert out.quantized.dtype == jnp.bfloat16
  np.testing.assert_array_equal(out.indices, ref.indices)
  np.testing.assert_array_equal(out.quantized, ref.quantized.astype(jnp.bfloat16))


def test_usage_metrics_match_numpy_for_small_and_huge_codebooks():
  q = FSQ((3, 3))
  out = jax.jit(q.apply)({}, jnp.array([[-9.0, -9.0], [-9.0, -9.0], [9.0, 0.0]]))
  np.testing.assert_allclose(out.metrics["usage"], 2 / 9)
  p = np.array([2 / 3, 1 / 3])
  np.testing.assert_allclose(out.metrics["perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-6)
  ids = np.array([5, 7, 7, 2**20 + 3, 5, 5, 2**30])
  got = jax.jit(base.code_usage_metrics, static_argnums=1)(jnp.asarray(ids), 2**31)  # sort path
  _, counts = np.unique(ids, return_counts=True)
  p = counts / counts.sum()
  np.testing.assert_allclose(got["usage"], 4 / 2**31)
  np.testing.assert_allclose(got["perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-6)


def test_errors_name_the_problem():
  q = FSQ((8, 5, 5, 5))
  with pytest.raises(ValueError, match=r"D=4.*\(2, 3\)"):
    q.apply({}, jnp.zeros((2, 3)))
  with pytest.raises(TypeError, match="integer"):
    q.indices_to_codes(jnp.zeros((2,), jnp.float32))
  with pytest.raises(ValueError, match=r"\[0, 1000\)"):
    q.indices_to_codes(jnp.array([0, 1000]))
