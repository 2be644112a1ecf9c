"""MAR's diffusion head (Li et al. 2024, "Autoregressive Image Generation without Vector
Quantization"): a small MLP with adaLN that denoises one continuous token given the
transformer's output z, and the Gaussian diffusion it samples with (Ho et al. 2020; the
cosine schedule and learned variances of Nichol & Dhariwal 2021, as MAR's copy of DiT's
`diffusion/`).

The schedule is numpy float64 (as the authors'), used as f32 constants; the head's output is
f32: [eps (C), v (C)], v in [-1, 1] interpolating the log-variance between the clipped
posterior variance and beta. Training losses live in jaxtok/losses/diffusion.py.

Shape letters: N tokens (any batch of them), C token channels, W head width, Z condition width.
"""

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.layers.adaln import modulate

_XAVIER = nn.initializers.xavier_uniform()
_ZERO = nn.initializers.zeros_init()


# -- the Gaussian diffusion (pure) -------------------------------------------------------------

class Schedule(NamedTuple):
  """Per-step constants of a (possibly respaced) diffusion, numpy float64 [S] each."""

  timesteps: np.ndarray  # the original step each step stands for (the head's time input)
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  posterior_log_variance_clipped: np.ndarray
  posterior_mean_coef1: np.ndarray  # of x0
  posterior_mean_coef2: np.ndarray  # of x_t


def cosine_betas(num_steps: int, max_beta: float = 0.999) -> np.ndarray:
  """Nichol & Dhariwal's cosine schedule: beta_i = 1 - abar((i+1)/S) / abar(i/S), abar(t) =
  cos((t + 0.008) / 1.008 * pi / 2)^2, capped at max_beta."""
  abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
  return np.array([min(1 - abar((i + 1) / num_steps) / abar(i / num_steps), max_beta)
                   for i in range(num_steps)], np.float64)


def spaced_timesteps(num_steps: int, count: int) -> list[int]:
  """`count` steps spread evenly over 0 .. num_steps - 1 (both ends kept), rounded as the
  authors' `space_timesteps(num_steps, str(count))`."""
  if not 1 <= count <= num_steps:
    raise ValueError(f"sampling steps must lie in [1, {num_steps}]; got {count}")
  stride = 1 if count <= 1 else (num_steps - 1) / (count - 1)
  return sorted({round(i * stride) for i in range(count)})


@functools.lru_cache(maxsize=16)
def make_schedule(num_steps: int = 1000, sampling_steps: int | None = None) -> Schedule:
  """The cosine diffusion of `num_steps`, respaced to `sampling_steps` (None: all): the kept
  steps' betas are recomputed from the cumulative products, as DDPM respacing does."""
  abar = np.cumprod(1.0 - cosine_betas(num_steps))
  kept = list(range(num_steps)) if sampling_steps is None else spaced_timesteps(
      num_steps, sampling_steps)
  abar = abar[kept]
  betas = 1.0 - abar / np.append(1.0, abar[:-1])
  prev = np.append(1.0, abar[:-1])
  post_var = betas * (1.0 - prev) / (1.0 - abar)
  clipped = np.log(np.append(post_var[1], post_var[1:])) if len(betas) > 1 else np.log(betas)
  return Schedule(np.array(kept), betas, abar, prev, clipped,
                  betas * np.sqrt(prev) / (1.0 - abar),
                  (1.0 - prev) * np.sqrt(1.0 - betas) / (1.0 - abar))


def _at(values: np.ndarray, t_N: jax.Array) -> jax.Array:
  """values[t] as f32 [N, 1] (broadcasts over the channels)."""
  return jnp.asarray(values, jnp.float32)[t_N][:, None]


def q_sample(s: Schedule, x0_NC, t_N, noise_NC) -> jax.Array:
  """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise."""
  return (_at(np.sqrt(s.alphas_cumprod), t_N) * x0_NC
          + _at(np.sqrt(1.0 - s.alphas_cumprod), t_N) * noise_NC)


def q_posterior(s: Schedule, x0_NC, xt_NC, t_N) -> tuple[jax.Array, jax.Array]:
  """Mean and clipped log-variance of q(x_{t-1} | x_t, x0)."""
  mean = _at(s.posterior_mean_coef1, t_N) * x0_NC + _at(s.posterior_mean_coef2, t_N) * xt_NC
  return mean, jnp.broadcast_to(_at(s.posterior_log_variance_clipped, t_N), mean.shape)


def predicted_x0(s: Schedule, xt_NC, t_N, eps_NC) -> jax.Array:
  """x0 = sqrt(1 / abar) x_t - sqrt(1 / abar - 1) eps."""
  return (_at(np.sqrt(1.0 / s.alphas_cumprod), t_N) * xt_NC
          - _at(np.sqrt(1.0 / s.alphas_cumprod - 1.0), t_N) * eps_NC)


def model_distribution(s: Schedule, out_N2C, xt_NC, t_N, clip_x0: float | None = None):
  """p(x_{t-1} | x_t) from the head's output [eps, v]: (mean, log-variance, x0); with
  clip_x0 the x0 prediction is clamped to [-clip_x0, clip_x0] first (guided diffusion's
  clip_denoised; MAR samples unclamped)."""
  eps_NC, v_NC = jnp.split(out_N2C.astype(jnp.float32), 2, axis=-1)
  frac = (v_NC + 1.0) / 2.0
  log_var = (frac * _at(np.log(s.betas), t_N)
             + (1.0 - frac) * _at(s.posterior_log_variance_clipped, t_N))
  x0 = predicted_x0(s, xt_NC, t_N, eps_NC)
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
  mean, _ = q_posterior(s, x0, xt_NC, t_N)
  return mean, log_var, x0


def ddpm_step(s: Schedule, out_N2C, xt_NC, t_N, noise_NC, temperature: float = 1.0,
              clip_x0: float | None = None):
  """One ancestral step: mean + exp(log_var / 2) noise temperature (no noise at t = 0)."""
  mean, log_var, _ = model_distribution(s, out_N2C, xt_NC, t_N, clip_x0)
  nonzero = (t_N != 0).astype(jnp.float32)[:, None]
  return mean + nonzero * jnp.exp(0.5 * log_var) * noise_NC * temperature


def ddim_step(s: Schedule, out_N2C, xt_NC, t_N, clip_x0: float | None = None) -> jax.Array:
  """One deterministic DDIM step (eta 0): sqrt(abar_prev) x0 + sqrt(1 - abar_prev) eps,
  eps recomputed from the (clamped, with clip_x0) x0."""
  eps_NC = jnp.split(out_N2C.astype(jnp.float32), 2, axis=-1)[0]
  x0 = predicted_x0(s, xt_NC, t_N, eps_NC)
  if clip_x0 is not None:
    x0 = jnp.clip(x0, -clip_x0, clip_x0)
    eps_NC = ((_at(np.sqrt(1.0 / s.alphas_cumprod), t_N) * xt_NC - x0)
              / _at(np.sqrt(1.0 / s.alphas_cumprod - 1.0), t_N))
  return (_at(np.sqrt(s.alphas_cumprod_prev), t_N) * x0
          + _at(np.sqrt(1.0 - s.alphas_cumprod_prev), t_N) * eps_NC)


def sample_loop(predict, s: Schedule, noise_NC: jax.Array, key: jax.Array, *,
                temperature: float = 1.0, sampler: str = "ddpm",
                clip_x0: float | None = None) -> jax.Array:
  """x_0 from x_T = noise_NC through every step of `s`, last to first, in a fori_loop.

  predict(x_t [N, C], original timesteps int32 [N]) -> [eps, v] [N, 2C]. "ddpm": ancestral
  sampling with the learned variances and the noise scaled by `temperature` (MAR's sampler);
  "ddim": deterministic, temperature scales only the starting noise. clip_x0: see
  `model_distribution` (the first steps divide by sqrt(abar) ~ 5e-5 in the cosine schedule,
  so a head that is not yet precise there can throw x0 far off without it).
  """
  if sampler not in ("ddpm", "ddim"):
    raise ValueError(f"sampler must be 'ddpm' or 'ddim'; got {sampler!r}")
  num = len(s.betas)
  x = noise_NC.astype(jnp.float32) * (temperature if sampler == "ddim" else 1.0)
  timesteps = jnp.asarray(s.timesteps, jnp.int32)

  def body(i, x):
    t = num - 1 - i
    t_N = jnp.full((x.shape[0],), t, jnp.int32)
    out = predict(x, timesteps[t_N])
    if sampler == "ddim":
      return ddim_step(s, out, x, t_N, clip_x0)
    noise = jax.random.normal(jax.random.fold_in(key, i), x.shape, jnp.float32)
    return ddpm_step(s, out, x, t_N, noise, temperature, clip_x0)

  return jax.lax.fori_loop(0, num, body, x)


# -- the head --------------------------------------------------------------------------------

def timestep_embedding(t_N: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding [N, dim] (f32): cos then sin of t * max_period^(-i / (dim / 2))."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t_N, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  return jnp.pad(emb, ((0, 0), (0, dim % 2)))


class DiffusionHead(nn.Module):
  """MAR's SimpleMLPAdaLN: x_t [N, C], original timestep t [N], condition z [N, Z] ->
  [eps, v] [N, 2C] (f32).

  input Dense(C -> W); y = time MLP(sinusoid 256 -> W -> W) + Dense(Z -> W)(z); `depth`
  residual blocks x + gate * MLP(modulate(LayerNorm(x))) with (shift, scale, gate) from
  Dense(silu(y)); a modulated LayerNorm without parameters and a zero-initialised Dense(W ->
  2C). Modulations are zero-initialised (adaLN-zero).
  """

  channels: int  # C
  width: int = 1024  # W
  depth: int = 3  # residual blocks
  frequency_dim: int = 256  # sinusoid width of the time embedding
  dtype: jnp.dtype = jnp.float32

  def _dense(self, features, name, init=_XAVIER):
    return nn.Dense(features, dtype=self.dtype, name=name,
                    kernel_init=nn.with_logical_partitioning(init, (None, "mlp")),
                    bias_init=nn.with_logical_partitioning(_ZERO, ("mlp",)))

  @nn.compact
  def __call__(self, x_NC: jax.Array, t_N: jax.Array, z_NZ: jax.Array) -> jax.Array:
    w = self.width
    normal = nn.initializers.normal(0.02)
    t_NW = self._dense(w, "time_fc1", normal)(timestep_embedding(t_N, self.frequency_dim))
    t_NW = self._dense(w, "time_fc2", normal)(nn.silu(t_NW))
    y_NW = (t_NW + self._dense(w, "cond_embed")(z_NZ)).astype(jnp.float32)
    x_NW = self._dense(w, "input_proj")(x_NC).astype(jnp.float32)
    for i in range(self.depth):
      shift, scale, gate = jnp.split(
          self._dense(3 * w, f"block_{i}_modulation", _ZERO)(nn.silu(y_NW)).astype(jnp.float32),
          3, axis=-1)
      h = modulate(nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, name=f"block_{i}_norm")(x_NW),
                   shift, scale)
      h = self._dense(w, f"block_{i}_fc2")(nn.silu(self._dense(w, f"block_{i}_fc1")(h)))
      x_NW = x_NW + gate * h.astype(jnp.float32)
    shift, scale = jnp.split(
        self._dense(2 * w, "final_modulation", _ZERO)(nn.silu(y_NW)).astype(jnp.float32), 2, -1)
    h = modulate(nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False,
                              dtype=jnp.float32)(x_NW), shift, scale)
    return self._dense(2 * self.channels, "out", _ZERO)(h).astype(jnp.float32)
