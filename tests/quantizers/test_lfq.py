"""LFQ: bits and ids against NumPy, entropies against brute force over all 2^B codes, 18 bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers import lfq
from jaxtok.quantizers.lfq import LFQ


def _np_entropy(p, axis=-1):
  return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def test_bits_and_ids_match_numpy(maybe_jit):
  z = np.array(jax.random.normal(jax.random.key(0), (5, 7, 6)))
  z[0, 0] = 0.0  # zero counts as a 0 bit (code -scale)
  q = LFQ(6, scale=0.5)
  out = maybe_jit(q.apply)({}, jnp.asarray(z))
  np.testing.assert_array_equal(out.indices, np.sum((z > 0) << np.arange(6), axis=-1))
  np.testing.assert_array_equal(out.quantized, np.where(z > 0, 0.5, -0.5))
  all_codes = np.asarray(maybe_jit(q.indices_to_codes)(jnp.arange(64)))
  np.testing.assert_array_equal(all_codes, np.where((np.arange(64)[:, None] >> np.arange(6)) & 1,
                                                    0.5, -0.5))
  round_trip = maybe_jit(lambda x: q.indices_to_codes(q.encode(x)))
  np.testing.assert_array_equal(round_trip(jnp.asarray(z)), out.quantized)


def test_straight_through_gradient_is_identity(maybe_jit):
  z = jax.random.normal(jax.random.key(1), (4, 5))
  w = jax.random.normal(jax.random.key(2), (4, 5))
  grad = maybe_jit(jax.grad(lambda x: jnp.sum(w * LFQ(5, scale=2.0).apply({}, x).quantized)))(z)
  np.testing.assert_array_equal(grad, w)


@pytest.mark.parametrize("group_bits", [1, 2, 3, 4, 6])
def test_entropies_equal_brute_force_over_all_codes(group_bits):
  bits, scale, temperature = 6, 0.7, 0.5
  z = np.asarray(jax.random.normal(jax.random.key(3), (2, 16, bits)), np.float64)
  codes = np.where((np.arange(2**bits)[:, None] >> np.arange(bits)) & 1, scale, -scale)
  dist = np.sum((z.reshape(-1, 1, bits) - codes) ** 2, axis=-1)  # [N, 2^B], the full distance
  logits = -dist / temperature
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  per_sample = np.mean(_np_entropy(p))
  p_bar = p.mean(0)
  # The codebook term is defined as Σ_g H(marginal of p̄ on group g's bits).
  factorized = 0.0
  for start in range(0, bits, group_bits):
    g = min(group_bits, bits - start)
    sub = (np.arange(2**bits) >> start) & (2**g - 1)
    factorized += _np_entropy(np.bincount(sub, weights=p_bar, minlength=2**g))
  got_ps, got_cb = jax.jit(lambda x: lfq.binary_code_entropies(
      x, value=scale, temperature=temperature, group_bits=group_bits))(jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(got_ps, per_sample, rtol=1e-5)  # exact for every grouping
  np.testing.assert_allclose(got_cb, factorized, rtol=1e-5)
  exact = _np_entropy(p_bar)
  assert float(got_cb) >= exact - 1e-5  # subadditivity: an upper bound ...
  if group_bits >= bits:
    np.testing.assert_allclose(got_cb, exact, rtol=1e-5)  # ... and exact with one group


def test_loss_and_metrics_are_the_weighted_terms(maybe_jit):
  q = LFQ(4, commitment_weight=0.3, entropy_weight=0.2, diversity_gamma=1.5, temperature=0.1)
  z = jax.random.normal(jax.random.key(4), (8, 4))
  out = maybe_jit(q.apply)({}, z)
  m = out.metrics
  np.testing.assert_allclose(m["commitment"], np.mean((np.asarray(z) - np.sign(z)) ** 2),
                             rtol=1e-6)
  np.testing.assert_allclose(out.loss, 0.3 * m["commitment"] + 0.2 * (
      m["per_sample_entropy"] - 1.5 * m["codebook_entropy"]), rtol=1e-6)
  ids = np.asarray(out.indices).ravel()
  np.testing.assert_allclose(m["usage"], len(np.unique(ids)) / 16)
  assert set(m) == {"usage", "perplexity", "per_sample_entropy", "codebook_entropy", "commitment"}


def test_18_bits_under_jit_with_memory_far_below_n_times_2_18():
  q = LFQ(18)
  n = 256
  z = jax.random.normal(jax.random.key(5), (n, 18))
  compiled = jax.jit(q.apply).lower({}, z).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < n * 2**18 * 4 / 16, temp  # the dense soft assignment would need n·2^18·4 bytes
  out = compiled({}, z)
  assert np.isfinite(float(out.loss)) and out.indices.dtype == jnp.int32
  np.testing.assert_array_equal(jax.jit(q.indices_to_codes)(out.indices), out.quantized)
  for bits in (18, 31):  # ids exact at the top of the range
    top = jax.jit(LFQ(bits).encode)(jnp.ones((bits,)))
    assert int(top) == 2**bits - 1
    np.testing.assert_array_equal(jax.jit(LFQ(bits).indices_to_codes)(top), np.ones(bits))


def test_bf16_vmap_and_dtypes():
  q = LFQ(5)
  z = jax.random.normal(jax.random.key(6), (3, 4, 5)).astype(jnp.bfloat16)
  out = jax.jit(q.apply)({}, z)
  assert out.quantized.dtype == jnp.bfloat16 and out.loss.dtype == jnp.float32
  assert all(v.dtype == jnp.float32 for v in out.metrics.values())
  ids = jax.jit(jax.vmap(lambda x: q.apply({}, x).indices))(z)
  np.testing.assert_array_equal(ids, out.indices)


def test_errors_name_the_problem():
  q = LFQ(6)
  with pytest.raises(ValueError, match=r"D=6.*\(2, 5\)"):
    q.apply({}, jnp.zeros((2, 5)))
  with pytest.raises(TypeError, match="integer"):
    q.indices_to_codes(jnp.zeros((2,)))
  with pytest.raises(ValueError, match=r"\[0, 64\)"):
    q.indices_to_codes(jnp.array([64]))
  with pytest.raises(ValueError, match="bits"):
    LFQ(32)


@pytest.mark.parametrize("quantizer", ["lfq", "bsq"])
def test_msb_bit_order_gives_vector_quantize_pytorch_ids(quantizer):
  # vector-quantize-pytorch's LFQ (1.32; also Open-MAGVIT2, BSQ's code): mask = 2 **
  # arange(B - 1, -1, -1); ids = sum((x > 0) * mask). Written here from that rule.
  from jaxtok.quantizers.bsq import BSQ  # pylint: disable=g-import-not-at-top
  bits = 7
  z = np.asarray(jax.random.normal(jax.random.key(5), (3, 4, bits)))
  expected = np.sum((z > 0).astype(np.int64) * 2 ** np.arange(bits - 1, -1, -1), axis=-1)
  make = (lambda **kw: LFQ(bits, **kw)) if quantizer == "lfq" else (lambda **kw: BSQ(bits, **kw))
  msb, lsb = make(bit_order="msb"), make()
  out = msb.apply({}, jnp.asarray(z))
  np.testing.assert_array_equal(out.indices, expected)
  np.testing.assert_array_equal(msb.apply({}, jnp.asarray(z), method="encode"), expected)
  # Same codes either way; only the ids' bit order differs (lsb ids are the reversed bits).
  np.testing.assert_array_equal(out.quantized, lsb.apply({}, jnp.asarray(z)).quantized)
  reversed_ids = np.sum((z > 0).astype(np.int64) << np.arange(bits), axis=-1)
  np.testing.assert_array_equal(lsb.apply({}, jnp.asarray(z)).indices, reversed_ids)
  np.testing.assert_array_equal(
      msb.apply({}, jnp.asarray(expected), method="indices_to_codes"), out.quantized)
  with pytest.raises(ValueError, match="bit_order must be one of"):
    make(bit_order="big")
