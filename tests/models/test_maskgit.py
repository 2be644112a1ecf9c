"""MaskGIT: training mask, decoding schedule, re-masking, bidirectional logits, sampler."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.generators import maskgit
from jaxtok.models.generators.maskgit import MaskGIT

K, CLASSES = 16, 5
TINY = dict(codebook_size=K, num_classes=CLASSES, width=32, depth=2, num_heads=2, mlp_dim=64)


def _ints(seed, shape, high):
  return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


def _numpy_masked_after(step, num_steps, start, now):
  if step == num_steps - 1:
    return 0
  scheduled = np.floor(start * np.cos(np.pi / 2 * (step + 1) / num_steps))
  return int(max(1, min(now - 1, scheduled)))


# -- pure functions -------------------------------------------------------------------------

def test_random_mask_counts_follow_the_cosine_schedule():
  mask = np.asarray(jax.jit(maskgit.random_mask, static_argnums=(1, 2))(
      jax.random.key(0), 4096, 64))
  counts = mask.sum(-1)
  assert mask.shape == (4096, 64) and counts.min() >= 1 and counts.max() <= 64
  # count = ceil(64 cos(pi u / 2)), u ~ U[0, 1): P(count <= c) = 1 - (2/pi) acos(c / 64).
  for c in (16, 32, 48):
    np.testing.assert_allclose((counts <= c).mean(), 1 - 2 / np.pi * np.arccos(c / 64),
                               atol=0.03)
  # Positions are uniform: every position masked about as often as the mean rate.
  np.testing.assert_allclose(mask.mean(0), mask.mean(), atol=0.05)
  np.testing.assert_array_equal(maskgit.random_mask(jax.random.key(0), 4096, 64), mask)


@pytest.mark.parametrize("num_steps, total", [(12, 256), (8, 12), (16, 12), (1, 5)])
def test_masked_count_per_step_equals_numpy_and_decreases(num_steps, total):
  now, counts = total, []
  for step in range(num_steps):
    got = int(maskgit.num_masked_after_step(step, num_steps, total, now))
    assert got == _numpy_masked_after(step, num_steps, total, now), (step, got)
    assert got < now or now == 1  # every step fixes a token while more than one is masked
    counts.append(got)
    now = got
  assert counts[-1] == 0 and all(a >= b for a, b in zip(counts, counts[1:]))


def test_remask_picks_exactly_the_least_confident_new_tokens():
  log_prob = jnp.log(jnp.array([[0.9, 0.1, 0.5, 0.3, 0.8, 0.2]]))
  known = jnp.array([[False, True, False, False, False, True]])
  remask = maskgit.remask_lowest_confidence(jax.random.key(0), log_prob, known,
                                            jnp.array([2]), 0.0)
  # Unknown confidences 0.9, 0.5, 0.3, 0.8 at positions 0, 2, 3, 4: the two lowest are 3, 2.
  np.testing.assert_array_equal(remask, [[False, False, True, True, False, False]])
  # With noise: always exactly `count`, never a known token, even with tied confidences.
  flat = jnp.zeros((64, 10))
  known = jax.random.bernoulli(jax.random.key(1), 0.3, (64, 10))
  count = jnp.maximum(0, (~known).sum(-1) - 1)
  for temperature in (0.0, 4.5):
    remask = maskgit.remask_lowest_confidence(jax.random.key(2), flat, known, count,
                                              temperature)
    np.testing.assert_array_equal(remask.sum(-1), count)
    assert not bool((remask & known).any())


# -- model ----------------------------------------------------------------------------------

def test_logits_are_bidirectional_and_accept_the_mask_id():
  """2D RoPE here (class token with zero q/k); the sampler test runs learned 1D positions."""
  model = MaskGIT(**TINY, token_shape=(3, 4), positions="rope")
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(1, *model.token_shape)
  tokens = tokens.reshape(1, -1).at[0, 4].set(model.mask_id).reshape(tokens.shape)
  labels = jnp.array([2], jnp.int32)
  variables = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens, labels))
  assert variables["params"]["token_embed"]["embedding"].shape == (K + 1, 32)

  def logit_sum(table, t):
    params = {**variables["params"], "token_embed": {"embedding": table}}
    logits = model.apply({"params": params}, tokens, labels)
    return logits.reshape(12, K)[t].sum(), logits

  grad = jax.jit(jax.grad(logit_sum, has_aux=True))
  g_table, logits = grad(variables["params"]["token_embed"]["embedding"], 0)
  chex.assert_shape(logits, (1, *model.token_shape, K))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  per_id = np.abs(np.asarray(g_table)).sum(-1)  # ids 0..11 except 4 are used, plus the mask
  used = np.r_[0:4, 5:12, K]
  assert np.all(per_id[used] > 0)  # position 0 sees every later position
  np.testing.assert_array_equal(per_id[[4, 12, 13, 14, 15]], 0.0)


def test_bad_inputs_are_clear_errors():
  model = MaskGIT(**TINY, token_shape=(2, 2))
  tokens = jnp.zeros((1, 2, 2), jnp.int32)
  variables = jax.jit(model.init)(jax.random.key(0), tokens, jnp.array([0]))
  with pytest.raises(ValueError, match=r"tokens must lie in \[0, 17\)"):
    model.apply(variables, tokens + 17, jnp.array([0]))
  with pytest.raises(ValueError, match=r"tokens must have shape \[B, 2, 2\]"):
    model.apply(variables, tokens.reshape(1, 4), jnp.array([0]))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
    model.sample(variables, 0, jnp.array([-1]))
  with pytest.raises(ValueError, match="num_steps must be a positive integer; got 0"):
    model.sample(variables, 0, jnp.array([1]), num_steps=0)
  with pytest.raises(ValueError, match="needs labels"):
    model.sample(variables, 0, num_samples=2, cfg_scale=3.0)


def test_sampler_follows_the_schedule_and_never_changes_fixed_tokens():
  """A 1D (TiTok-like) sequence of 12 tokens with learned positions, CFG on."""
  model = MaskGIT(**TINY, token_shape=(12,), positions="learned")
  labels = jnp.array([0, 3, 4], jnp.int32)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((3, 12), jnp.int32), labels)
  kwargs = dict(num_steps=5, cfg_scale=2.0, cfg_schedule="linear", top_k=10, top_p=0.95,
                return_history=True)
  tokens, history = model.sample(variables, 0, labels, **kwargs)
  chex.assert_shape(tokens, (3, 12))
  chex.assert_type(tokens, jnp.int32)
  history = np.asarray(history).reshape(5, 3, 12)
  masked = (history == model.mask_id).sum(-1)  # [steps, B]
  now, expected = 12, []
  for step in range(5):
    now = _numpy_masked_after(step, 5, 12, now)
    expected.append(now)
  np.testing.assert_array_equal(masked, np.repeat(np.array(expected)[:, None], 3, axis=1))
  assert expected == [11, 9, 7, 3, 0]
  for step in range(1, 5):  # once fixed, a token keeps its id
    fixed = history[step - 1] != model.mask_id
    np.testing.assert_array_equal(history[step][fixed], history[step - 1][fixed])
  np.testing.assert_array_equal(history[-1], np.asarray(tokens).reshape(3, 12))
  assert tokens.min() >= 0 and tokens.max() < K  # no mask id left, all in range
  # Same seed, same samples; another seed, others.
  np.testing.assert_array_equal(model.sample(variables, 0, labels, **kwargs)[0], tokens)
  assert not np.array_equal(model.sample(variables, 1, labels, **kwargs)[0], tokens)
