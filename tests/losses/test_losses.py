"""Reconstruction and GAN losses against NumPy formulas; adaptive weight, LeCam, schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import losses

RNG = np.random.default_rng(0)
REAL = RNG.normal(size=(4, 6, 6, 1)).astype(np.float32) * 2  # PatchGAN-like logit maps
FAKE = RNG.normal(size=(4, 6, 6, 1)).astype(np.float32) * 2


def _softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_reconstruction_losses():
  x = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)
  y = RNG.normal(size=(2, 8, 8, 3)).astype(np.float32)
  np.testing.assert_allclose(losses.l1_loss(x, y), np.mean(np.abs(x - y)), rtol=1e-6)
  np.testing.assert_allclose(losses.l2_loss(x, y), np.mean((x - y) ** 2), rtol=1e-6)
  with pytest.raises(ValueError, match="equal shapes"):
    losses.l1_loss(x, y[:1])


def test_hinge_losses():
  d = 0.5 * (np.mean(np.maximum(0, 1 - REAL)) + np.mean(np.maximum(0, 1 + FAKE)))
  np.testing.assert_allclose(losses.hinge_d_loss(REAL, FAKE), d, rtol=1e-6)
  np.testing.assert_allclose(losses.discriminator_loss(REAL, FAKE, "hinge"), d, rtol=1e-6)
  np.testing.assert_allclose(losses.hinge_g_loss(FAKE), -np.mean(FAKE), rtol=1e-6)
  np.testing.assert_allclose(losses.generator_loss(FAKE, "hinge"), -np.mean(FAKE), rtol=1e-6)


def test_non_saturating_losses():
  # Binary cross-entropy written out: -log sigmoid(real), -log(1 - sigmoid(fake)).
  sig = lambda v: 1 / (1 + np.exp(-v.astype(np.float64)))
  d = 0.5 * (np.mean(-np.log(sig(REAL))) + np.mean(-np.log(1 - sig(FAKE))))
  g = np.mean(-np.log(sig(FAKE)))
  np.testing.assert_allclose(losses.non_saturating_d_loss(REAL, FAKE), d, rtol=1e-5)
  np.testing.assert_allclose(losses.discriminator_loss(REAL, FAKE, "non_saturating"), d,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.non_saturating_g_loss(FAKE), g, rtol=1e-5)
  np.testing.assert_allclose(losses.generator_loss(FAKE, "non_saturating"), g, rtol=1e-5)
  # Stable for large logits, where the naive formula overflows.
  big = np.array([80.0, -80.0], np.float32)
  assert np.all(np.isfinite(losses.non_saturating_d_loss(big, big)))
  np.testing.assert_allclose(losses.non_saturating_g_loss(big), np.mean(_softplus(-big)))
  with pytest.raises(ValueError, match="'hinge' or 'non_saturating'"):
    losses.generator_loss(FAKE, "wasserstein")


def test_losses_are_f32_for_bf16_inputs():
  real, fake = jnp.asarray(REAL, jnp.bfloat16), jnp.asarray(FAKE, jnp.bfloat16)
  outs = [losses.hinge_d_loss(real, fake), losses.hinge_g_loss(fake),
          losses.non_saturating_d_loss(real, fake), losses.non_saturating_g_loss(fake),
          losses.l1_loss(real, fake), losses.l2_loss(real, fake),
          losses.lecam_loss(real, fake, losses.lecam_init())]
  assert all(o.dtype == jnp.float32 and o.shape == () for o in outs)
  # The maths runs on the upcast values, not in bf16.
  np.testing.assert_allclose(outs[1], -np.mean(np.asarray(fake, np.float32)), rtol=1e-6)
  grad = jax.grad(lambda f: losses.non_saturating_g_loss(f))(fake)
  assert grad.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grad.astype(jnp.float32))))


def test_adaptive_weight_matches_hand_computation():
  nll_g = np.array([[3.0, 0.0], [0.0, 4.0]], np.float32)  # norm 5
  gan_g = np.array([0.0, 2.0], np.float32)  # norm 2
  np.testing.assert_allclose(losses.adaptive_weight(nll_g, gan_g), 5.0 / (2.0 + 1e-4), rtol=1e-6)
  # Pytrees: global norms over all leaves.
  tree = {"kernel": nll_g, "bias": np.array([12.0], np.float32)}  # norm 13
  np.testing.assert_allclose(losses.adaptive_weight(tree, gan_g), 13.0 / (2.0 + 1e-4), rtol=1e-6)
  # Clamped to 1e4: a vanishing adversarial gradient gives 5 / 1e-4 = 5e4 before the clamp.
  assert float(losses.adaptive_weight(nll_g, np.zeros(2, np.float32))) == 1e4
  assert float(losses.adaptive_weight(nll_g, gan_g, max_weight=2.0)) == 2.0
  assert float(losses.adaptive_weight(np.zeros(2, np.float32), gan_g)) == 0.0
  # Stopped gradient.
  grad = jax.grad(lambda a: losses.adaptive_weight(a, gan_g))(nll_g)
  np.testing.assert_array_equal(grad, 0.0)


def test_loss_part_grads_equal_separate_grads():
  params = {"enc": jnp.arange(3.0), "last": jnp.array([[0.5, -1.0], [2.0, 0.25]])}

  def parts(p):
    h = jnp.tanh(p["enc"]).sum() * p["last"]
    return jnp.sum(h**2), jnp.sum(jnp.sin(h))

  (nll, gan), (nll_g, gan_g) = losses.loss_part_grads(parts, params)
  np.testing.assert_allclose(nll, parts(params)[0], rtol=1e-6)
  for ours, ref in ((nll_g, jax.grad(lambda p: parts(p)[0])(params)),
                    (gan_g, jax.grad(lambda p: parts(p)[1])(params))):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), ours, ref)
  _, _, aux = losses.loss_part_grads(lambda p: (parts(p), p["enc"][0]), params, has_aux=True)
  assert float(aux) == 0.0
  # A trainer's combination: weight from the last layer's slices.
  w = losses.adaptive_weight(nll_g["last"], gan_g["last"])
  expected = np.linalg.norm(nll_g["last"]) / (np.linalg.norm(gan_g["last"]) + 1e-4)
  np.testing.assert_allclose(w, expected, rtol=1e-5)


def test_gan_weight_schedule():
  assert float(losses.gan_weight_schedule(0, 100, 0.8)) == 0.0
  assert float(losses.gan_weight_schedule(99, 100, 0.8)) == 0.0
  np.testing.assert_allclose(losses.gan_weight_schedule(100, 100, 0.8), 0.8)
  np.testing.assert_allclose(losses.gan_weight_schedule(10**6, 100, 0.8), 0.8)
  steps = jnp.array([0, 99, 100, 101])
  out = jax.jit(jax.vmap(lambda s: losses.gan_weight_schedule(s, 100, 0.5)))(steps)
  np.testing.assert_array_equal(out, [0.0, 0.0, 0.5, 0.5])


def test_lecam_loss_and_update():
  ema = losses.LeCamEMA(real=jnp.float32(0.3), fake=jnp.float32(-0.2))
  expected = (np.mean(np.maximum(REAL - (-0.2), 0) ** 2)
              + np.mean(np.maximum(0.3 - FAKE, 0) ** 2))
  np.testing.assert_allclose(losses.lecam_loss(REAL, FAKE, ema), expected, rtol=1e-6)
  # Gradients reach the logits only, never the EMA state.
  g_real, g_ema = jax.grad(lambda r, e: losses.lecam_loss(r, FAKE, e), argnums=(0, 1))(REAL, ema)
  assert float(jnp.abs(g_real).sum()) > 0 and float(g_ema.real) == float(g_ema.fake) == 0.0

  init = losses.lecam_init()
  assert float(init.real) == float(init.fake) == 0.0
  new = losses.lecam_update(ema, REAL, FAKE, decay=0.9)
  np.testing.assert_allclose(new.real, 0.9 * 0.3 + 0.1 * REAL.mean(), rtol=1e-6)
  np.testing.assert_allclose(new.fake, 0.9 * -0.2 + 0.1 * FAKE.mean(), rtol=1e-6)
  # The state is a pytree: it jits and checkpoints like any other.
  jitted = jax.jit(losses.lecam_update)(ema, REAL, FAKE)
  assert isinstance(jitted, losses.LeCamEMA) and jitted.real.dtype == jnp.float32
