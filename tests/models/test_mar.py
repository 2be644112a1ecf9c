"""MAR: published parameter counts, MAR's masking and sampling schedules, the encoder blind
to masked tokens, and the seeded sampler."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.generators import mar
from jaxtok.models.generators.mar import MAR

TINY = dict(token_shape=(3, 3), token_dim=4, num_classes=5, width=32, depth=1, num_heads=2,
            buffer_size=2, head_width=32, head_depth=1)


@pytest.fixture(scope="module")
def tiny():
  model = MAR(**TINY)
  variables = nn.unbox(jax.jit(lambda: model.init(jax.random.key(0), model.example_inputs(2)))())
  leaves, tree = jax.tree.flatten(variables)  # every parameter perturbed (zero inits too)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  variables = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, keys)])
  latents = jax.random.normal(jax.random.key(2), (2, 3, 3, 4))
  return model, variables, latents, jnp.array([1, 3], jnp.int32)


@pytest.mark.parametrize("name, expected", [
    # LTH14/mar models/mar.py (16-channel latents, 16x16 tokens, 64 buffer tokens, heads of
    # depth 6 / 8 / 12 and width 1024 / 1280 / 1536 as its README), on torch's meta device.
    ("MAR-B", 207_924_768), ("MAR-L", 478_326_304), ("MAR-H", 942_403_104)])
def test_presets_have_the_published_parameter_counts(name, expected):
  model = MAR.from_preset(name)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), model.example_inputs(1)))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == expected


def test_masks_follow_random_orders_and_the_truncated_normal():
  ranks = np.asarray(mar.random_ranks(jax.random.key(0), 16, 9))
  np.testing.assert_array_equal(np.sort(ranks, 1), np.tile(np.arange(9), (16, 1)))
  ratios = np.asarray(jax.vmap(mar.mask_ratio)(jax.random.split(jax.random.key(1), 2000)))
  assert ratios.min() >= 0.7 and ratios.max() <= 1.0
  # The mean of N(1, 0.25) truncated to [0.7, 1]: 1 - 0.25 (phi(0) - phi(-1.2)) / (Phi(0) -
  # Phi(-1.2)) = 0.8721.
  assert abs(ratios.mean() - 0.8721) < 0.01
  mask = np.asarray(mar.random_mask(jax.random.key(2), 16, 256))
  counts = mask.sum(1)
  assert (counts == counts[0]).all() and 179 <= counts[0] <= 256  # ceil(256 * 0.7) = 180


def test_sampling_schedule_is_marss_cosine():
  # 256 tokens in 64 iterations: floor(256 cos(pi/2 (i + 1) / 64)) stay masked, at least one
  # fewer than before and at least 1 (the authors' mask_len).
  still, want, counts = 256, [], []
  for i in range(64):
    counts.append(float(mar.masked_after(i, 64, 256, float(still))))
    still = max(1, min(still - 1, math.floor(256 * math.cos(math.pi / 2 * (i + 1) / 64))))
    want.append(still)
  assert counts == want and counts[0] == 255 and counts[1] == 254 and counts[-1] == 1
  # Fewer iterations than cosine steps allow: every iteration still reveals a token.
  assert float(mar.masked_after(0, 4, 4, 4.0)) == 3.0
  # The sampler draws max_due tokens per iteration: the most due at once, plus 2.
  dues = [256 - counts[0]] + [a - b for a, b in zip(counts, counts[1:-1])] + [counts[-2]]
  assert mar.max_due(64, 256) == max(dues) + 2 == 9 and mar.max_due(1, 9) == 9


def test_encoder_ignores_masked_tokens(tiny):
  model, variables, latents, labels = tiny
  mask = jnp.array([[True, False, True, False, False, True, True, False, True]] * 2)
  run = jax.jit(lambda x: model.apply(variables, x, labels, mask=mask.reshape(2, 3, 3)))
  z = run(latents)
  flat = latents.reshape(2, 9, 4)
  hidden = run(flat.at[:, 0].add(5.0).reshape(latents.shape))  # position 0 is masked
  np.testing.assert_allclose(hidden, z, atol=1e-5, rtol=0)
  seen = run(flat.at[:, 1].add(5.0).reshape(latents.shape))  # position 1 is visible
  assert np.abs(np.asarray(seen) - np.asarray(z)).max() > 1e-2
  assert z.shape == (2, 9, 32) and z.dtype == jnp.float32


def test_sampler_is_seeded_and_guided(tiny):
  model, variables, _, labels = tiny
  kwargs = dict(num_steps=3, sampling_steps=8)
  a = model.sample(variables, 0, labels, cfg_scale=2.0, **kwargs)
  assert a.shape == (2, 3, 3, 4) and a.dtype == jnp.float32 and np.isfinite(a).all()
  assert (np.asarray(a) != 0).all()  # every token drawn (the grid starts at 0)
  np.testing.assert_array_equal(a, model.sample(variables, 0, labels, cfg_scale=2.0, **kwargs))
  assert not np.allclose(a, model.sample(variables, 1, labels, cfg_scale=2.0, **kwargs))
  plain = model.sample(variables, 0, labels, **kwargs)
  assert not np.allclose(a, plain)  # guidance matters
  # clip_x0 bounds x0 and so the last step's output (at t = 0: x0 itself, no noise).
  clipped = model.sample(variables, 0, labels, clip_x0=0.5, **kwargs)
  assert np.abs(plain).max() > 1.0 and np.abs(clipped).max() <= 0.5 + 1e-3
  with pytest.raises(ValueError, match="num_steps must be an integer in"):
    model.sample(variables, 0, labels, num_steps=10)
