"""MAR's diffusion head and loss: the schedule's published constants, the head's parameter
count, the samplers on a Gaussian mixture's exact noise prediction, and the mixture learned
by the head and sampled back (mean, variance, both modes)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtok.losses import diffusion as loss_lib
from jaxtok.models.generators import diffusion as diff

MODES = np.array([[-1.0, 0.5], [1.0, -0.5]], np.float32)  # two equal modes, std 0.3
STD = 0.3


def test_cosine_schedule_and_respacing():
  s = diff.make_schedule(1000)
  assert len(s.betas) == 1000 and s.betas.max() == pytest.approx(0.999)
  np.testing.assert_allclose(s.betas, diff.cosine_betas(1000), rtol=1e-9, atol=1e-12)
  # abar(t) = f(t) / f(0), f(t) = cos((t + 0.008) / 1.008 * pi / 2)^2, at the step ends.
  f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
  assert s.alphas_cumprod[499] == pytest.approx(f(0.5) / f(0.0), rel=1e-9)
  kept = diff.spaced_timesteps(1000, 100)
  assert len(kept) == 100 and kept[0] == 0 and kept[-1] == 999 and kept[1] == 10
  r = diff.make_schedule(1000, 100)
  np.testing.assert_allclose(r.alphas_cumprod, s.alphas_cumprod[kept], rtol=1e-12)
  with pytest.raises(ValueError, match="sampling steps"):
    diff.spaced_timesteps(1000, 0)


def test_head_parameter_count_is_mar_bs():
  # MAR-B's head (width 1024, 6 blocks, 16 channels, z 768): 35,749,920 in the authors' code.
  head = diff.DiffusionHead(channels=16, width=1024, depth=6)
  shapes = jax.eval_shape(lambda: head.init(jax.random.key(0), jnp.zeros((1, 16)),
                                            jnp.zeros((1,), jnp.int32), jnp.zeros((1, 768))))
  assert sum(math.prod(x.shape) for x in jax.tree.leaves(shapes)) == 35_749_920


def mixture_eps(x_NC, t_N):
  """The exact noise prediction E[eps | x_t] for the mixture: sqrt(1 - abar) times minus the
  score of its noised marginal, a mixture of N(sqrt(abar) mu_k, abar std^2 + 1 - abar)."""
  abar = jnp.asarray(diff.make_schedule(1000).alphas_cumprod, jnp.float32)[t_N][:, None, None]
  var = abar * STD**2 + 1.0 - abar
  centred = x_NC[:, None] - jnp.sqrt(abar) * jnp.asarray(MODES)[None]  # [N, modes, C]
  resp = jax.nn.softmax(-jnp.sum(centred**2, -1) / (2 * var[..., 0]), axis=-1)
  return jnp.sqrt(1.0 - abar[:, 0]) * jnp.sum(resp[..., None] * centred / var, axis=1)


def _mixture(key, n):
  pick_key, noise_key = jax.random.split(key)
  pick = jax.random.bernoulli(pick_key, 0.5, (n,)).astype(jnp.int32)
  return jnp.asarray(MODES)[pick] + STD * jax.random.normal(noise_key, (n, 2))


@pytest.mark.parametrize("sampler, v", [("ddpm", -1.0), ("ddpm", 0.0), ("ddim", 0.0)])
def test_samplers_recover_a_gaussian_mixture_from_its_exact_noise_prediction(sampler, v):
  """With the exact E[eps | x_t] (and a variance choice v), 100 respaced steps of either
  sampler give the mixture's mean, variance and both modes."""
  predict = lambda x, t: jnp.concatenate([mixture_eps(x, t), jnp.full_like(x, v)], -1)  # noqa: E731
  x = np.asarray(jax.jit(lambda k: diff.sample_loop(
      predict, diff.make_schedule(1000, 100), jax.random.normal(k, (4000, 2)),
      jax.random.fold_in(k, 1), sampler=sampler))(jax.random.key(2)))
  np.testing.assert_allclose(x.mean(0), MODES.mean(0), atol=0.06)
  np.testing.assert_allclose(x.var(0), STD**2 + MODES.var(0), rtol=0.1)
  near = np.linalg.norm(x[:, None] - MODES[None], axis=-1).min(1) < 3 * STD
  assert near.mean() > 0.95 and 0.45 < (x[:, 0] > 0).mean() < 0.55


def test_head_learns_the_mixtures_noise_prediction():
  """The diffusion loss falls, the variance term stays finite, and the learned noise
  prediction approaches the exact one at mid-range noise levels."""
  head = diff.DiffusionHead(channels=2, width=64, depth=2)
  z = jnp.zeros((256, 4))
  params = head.init(jax.random.key(0), jnp.zeros((256, 2)), jnp.zeros((256,), jnp.int32), z)
  schedule, tx = diff.make_schedule(1000), optax.adam(3e-3)

  @jax.jit
  def train(params, key):
    def step(carry, key):
      params, opt = carry
      data_key, loss_key = jax.random.split(key)
      loss_fn = lambda p: loss_lib.diffusion_loss(  # noqa: E731
          lambda x, t: head.apply(p, x, t, z), schedule, _mixture(data_key, 256), loss_key)
      (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt = tx.update(grads, opt, params)
      return (optax.apply_updates(params, updates), opt), (loss, parts["vb"])
    (params, _), out = jax.lax.scan(step, (params, tx.init(params)), jax.random.split(key, 400))
    return params, out

  params, (losses, vb) = train(params, jax.random.key(1))
  losses = np.asarray(losses)
  assert np.isfinite(losses).all() and np.isfinite(np.asarray(vb)).all()
  assert losses[-100:].mean() < 0.75 * losses[:10].mean(), (losses[:10].mean(),
                                                            losses[-100:].mean())
  t = jnp.full((2000,), 300)
  x = diff.q_sample(schedule, _mixture(jax.random.key(5), 2000), t,
                    jax.random.normal(jax.random.key(6), (2000, 2)))
  err = jnp.mean((head.apply(params, x, t, jnp.zeros((2000, 4)))[:, :2] - mixture_eps(x, t))**2)
  untrained = jnp.mean(mixture_eps(x, t)**2)  # the zero-initialised head's error
  assert float(err) < 0.1 * float(untrained), (float(err), float(untrained))
  # Sampled with the learned head (x0 clamped to +-3, the data's range: this young head's eps
  # at the first steps is not precise enough for their 1 / sqrt(abar) ~ 2e4 unclamped).
  zs = jnp.zeros((4000, 4))
  x = np.asarray(jax.jit(lambda k: diff.sample_loop(
      lambda x, t: head.apply(params, x, t, zs), diff.make_schedule(1000, 100),
      jax.random.normal(k, (4000, 2)), jax.random.fold_in(k, 1), clip_x0=3.0))(
          jax.random.key(2)))
  np.testing.assert_allclose(x.mean(0), MODES.mean(0), atol=0.2)
  np.testing.assert_allclose(x.var(0), STD**2 + MODES.var(0), rtol=0.2)
  near = np.linalg.norm(x[:, None] - MODES[None], axis=-1).min(1) < 3 * STD
  assert near.mean() > 0.9 and 0.35 < (x[:, 0] > 0).mean() < 0.65
