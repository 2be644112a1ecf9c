"""RAR: published parameter counts, the annealing schedule, random orders, the order-causal
training forward, KV-cache decoding equal to it, and the raster-order sampler."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.generators import rar
from jaxtok.models.generators.rar import RAR

K, GRID, CLASSES = 11, (3, 3), 5  # codebook, token grid (T = 9), classes
TINY = dict(codebook_size=K, token_shape=GRID, num_classes=CLASSES, width=32, depth=2,
            num_heads=4, mlp_dim=48, extra_positions=3, extra_steps=2)


def _randomized(variables, seed=0):
  """Every parameter perturbed (adaLN-zero modulations and the zero head included), so a
  mistake in any of them changes the logits."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape, x.dtype)
                                   for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def tiny():
  model = RAR(**TINY)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, K, (2, *GRID)), jnp.int32)
  labels = jnp.array([1, 4], jnp.int32)
  variables = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), tokens, labels))())
  return model, _randomized(variables), tokens, labels


@pytest.mark.parametrize("name, expected", [
    # bytedance/1d-tokenizer modeling/rar.py, summed on torch's meta device (1024 codes,
    # 1000 classes, 256 tokens; tools/fixtures/rar.py prints them).
    ("RAR-B", 260_923_648), ("RAR-L", 461_668_352), ("RAR-XL", 955_425_024),
    ("RAR-XXL", 1_498_520_704)])
def test_presets_have_the_published_parameter_counts(name, expected):
  model = RAR.from_preset(name)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, 16, 16), jnp.int32)))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == expected


def test_annealing_schedule_matches_its_formula():
  # RAR-B's recipe: random orders until step 125k, raster from 187.5k, linear in between.
  steps = jnp.array([0, 125_000, 140_625, 156_250, 187_500, 250_000])
  got = rar.random_order_ratio(steps, 125_000, 187_500)
  np.testing.assert_allclose(got, [1.0, 1.0, 0.75, 0.5, 0.0, 0.0], atol=1e-6)
  with pytest.raises(ValueError, match="anneal_start <= anneal_end"):
    rar.random_order_ratio(0, 10, 5)


def test_random_orders_are_permutations():
  orders = np.asarray(rar.sample_orders(jax.random.key(0), 64, 9, 1.0))
  assert orders.shape == (64, 9) and orders.dtype == np.int32
  np.testing.assert_array_equal(np.sort(orders, axis=1), np.tile(np.arange(9), (64, 1)))
  assert len({tuple(r) for r in orders}) > 60  # distinct random permutations
  raster = np.asarray(rar.sample_orders(jax.random.key(0), 64, 9, 0.0))
  np.testing.assert_array_equal(raster, np.tile(np.arange(9), (64, 1)))
  half = np.asarray(rar.sample_orders(jax.random.key(1), 64, 9, 0.5))
  assert 0.3 < np.mean(np.any(half != np.arange(9), axis=1)) < 0.7


def test_guidance_schedule():
  # power 0: constant; otherwise 1 at the first step, the midpoint of the cosine when
  # (t / T)^power = 1/2, and close to the scale at the end.
  np.testing.assert_allclose(rar.cfg_scale_at(jnp.arange(4), 4, 5.0, 0.0), 5.0)
  assert float(rar.cfg_scale_at(0, 256, 16.0, 2.75)) == 1.0
  np.testing.assert_allclose(rar.cfg_scale_at(128, 256, 3.0, 1.0), 2.0, atol=1e-6)
  np.testing.assert_allclose(rar.cfg_scale_at(255, 256, 3.0, 1.0), 3.0, atol=1e-3)


def test_logits_are_causal_in_the_given_order(tiny):
  """Changing the token at position j of the order changes no prediction of positions <= j
  (they must not see it) and changes later ones; raster order is the default."""
  model, variables, tokens, labels = tiny
  order = jnp.asarray(np.random.default_rng(3).permutation(9), jnp.int32)
  orders = jnp.stack([order, jnp.arange(9, dtype=jnp.int32)])
  apply = jax.jit(lambda t, o: model.apply(variables, t, labels, orders=o))
  base = np.asarray(apply(tokens, orders)).reshape(2, 9, K)
  np.testing.assert_array_equal(base[1], np.asarray(apply(tokens, None)).reshape(2, 9, K)[1])
  j = 4
  flat = tokens.reshape(2, 9)
  changed = flat.at[0, order[j]].set((flat[0, order[j]] + 1) % K)
  new = np.asarray(apply(changed.reshape(tokens.shape), orders)).reshape(2, 9, K)
  seen_before = np.asarray(order[:j + 1])
  np.testing.assert_array_equal(new[0, seen_before], base[0, seen_before])
  assert np.abs(new[0, np.asarray(order[j + 1:])] - base[0, np.asarray(order[j + 1:])]).min() > 0
  # Each prediction knows which token it predicts (target-aware positions): the same context
  # predicting another grid position gives other logits.
  swapped = orders.at[0, j].set(order[j + 1]).at[0, j + 1].set(order[j])
  out = np.asarray(apply(tokens, swapped)).reshape(2, 9, K)
  assert np.abs(out[0, order[j + 1]] - base[0, order[j]]).max() > 1e-3


def test_kv_cache_decoding_equals_the_raster_forward(tiny):
  model, variables, tokens, labels = tiny
  drop = jnp.array([False, True])  # the second row with the null class
  want = jax.jit(lambda: model.apply(variables, tokens, labels, drop_cond=drop))()
  logits, cond, cache = jax.jit(lambda: model.apply(variables, labels, drop,
                                                    model.init_cache(2), method=RAR.prefill))()
  got = [logits]
  step = jax.jit(lambda t, s, c, kv: model.apply(variables, t, s, c, kv,
                                                 method=RAR.decode_step))
  for s in range(8):
    logits, cache = step(tokens.reshape(2, 9)[:, s], s, cond, cache)
    got.append(logits)
  np.testing.assert_allclose(np.stack(got, 1), np.reshape(want, (2, 9, K)), atol=2e-5, rtol=0)


def test_sampler_is_seeded_greedy_follows_the_argmax_and_checks(tiny):
  model, variables, _, labels = tiny
  a = model.sample(variables, 7, labels, cfg_scale=3.0, cfg_power=1.5)
  b = model.sample(variables, 7, labels, cfg_scale=3.0, cfg_power=1.5)
  assert a.shape == (2, *GRID) and a.dtype == jnp.int32
  np.testing.assert_array_equal(a, b)
  greedy = model.sample(variables, 0, labels, temperature=0.0)
  logits = model.apply(variables, greedy, labels)  # each token is the argmax given its past
  np.testing.assert_array_equal(np.argmax(logits, -1), greedy)
  with pytest.raises(ValueError, match="cfg_power"):
    model.sample(variables, 0, labels, cfg_scale=2.0, cfg_power=-1.0)
  with pytest.raises(ValueError, match="orders must be"):
    model.apply(variables, greedy, labels, orders=jnp.zeros((2, 8), jnp.int32))
