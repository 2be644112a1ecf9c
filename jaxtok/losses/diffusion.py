"""The diffusion loss of MAR (Li et al. 2024): per-token denoising with learned variances
(Nichol & Dhariwal 2021): the noise-prediction MSE plus the variational bound on the
variances (the MSE's mean frozen inside it), in f32.

Shape letters: N tokens, C channels.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.models.generators import diffusion as diff


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
  """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_normal_cdf(x):
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x, mean, log_scale) -> jax.Array:
  """log P(x) of a Gaussian discretized to 256 bins over [-1, 1] (the decoder term of the
  bound at t = 0, as the authors' code applies it to latents too), in nats."""
  centered, inv_std = x - mean, jnp.exp(-log_scale)
  cdf_plus = _approx_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = _approx_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def diffusion_loss(predict, schedule: diff.Schedule, x0_NC: jax.Array, key: jax.Array,
                   weights_N: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """Mean over tokens (weighted by `weights_N`, e.g. MAR's mask) of MSE(eps) + VB at a
  uniform step t of the schedule and standard normal noise; see `diffusion_loss_at`.
  Returns (loss, {"mse", "vb"})."""
  t_key, noise_key = jax.random.split(key)
  t_N = jax.random.randint(t_key, (x0_NC.shape[0],), 0, len(schedule.betas))
  noise_NC = jax.random.normal(noise_key, x0_NC.shape, jnp.float32)
  return diffusion_loss_at(predict, schedule, x0_NC, t_N, noise_NC, weights_N)


def diffusion_loss_at(predict, schedule: diff.Schedule, x0_NC: jax.Array, t_N: jax.Array,
                      noise_NC: jax.Array, weights_N: jax.Array | None = None
                      ) -> tuple[jax.Array, dict]:
  """MSE(eps) + VB per token at steps t_N (indices into the schedule) with this noise,
  averaged with `weights_N` (default: all 1).

  predict(x_t [N, C], original timesteps int32 [N]) -> [eps, v] [N, 2C]. VB is the KL of
  the true posterior to the model's (in bits per channel; the decoder NLL at t = 0), its
  mean taken from the stopped eps so that only the variances learn from it.
  """
  x0_NC = x0_NC.astype(jnp.float32)
  xt_NC = diff.q_sample(schedule, x0_NC, t_N, noise_NC)
  out_N2C = predict(xt_NC, jnp.asarray(schedule.timesteps, jnp.int32)[t_N]).astype(jnp.float32)
  eps_NC, v_NC = jnp.split(out_N2C, 2, axis=-1)
  mse_N = jnp.mean((noise_NC - eps_NC) ** 2, axis=-1)
  frozen = jnp.concatenate([jax.lax.stop_gradient(eps_NC), v_NC], axis=-1)
  mean, log_var, _ = diff.model_distribution(schedule, frozen, xt_NC, t_N)
  true_mean, true_log_var = diff.q_posterior(schedule, x0_NC, xt_NC, t_N)
  kl_N = jnp.mean(normal_kl(true_mean, true_log_var, mean, log_var), axis=-1) / np.log(2.0)
  nll_N = -jnp.mean(discretized_gaussian_log_likelihood(x0_NC, mean, 0.5 * log_var),
                    axis=-1) / np.log(2.0)
  vb_N = jnp.where(t_N == 0, nll_N, kl_N)
  if weights_N is None:
    weights_N = jnp.ones_like(mse_N)
  weights_N = weights_N.astype(jnp.float32)
  total = jnp.maximum(jnp.sum(weights_N), 1.0)
  mean_of = lambda v: jnp.sum(v * weights_N) / total  # noqa: E731
  return mean_of(mse_N + vb_N), {"mse": mean_of(mse_N), "vb": mean_of(vb_N)}
