"""Masked autoregressive generator over continuous tokens: MAR (Li et al. 2024,
"Autoregressive Image Generation without Vector Quantization").

A MAE-style encoder/decoder transformer reads a KL tokenizer's latents with a random subset
masked, and a small diffusion head (models/generators/diffusion.py) models each masked
token given the decoder's output there. Sampling fills the grid in a random order over
`num_steps` iterations on MAR's cosine schedule. The layout is that of LTH14/mar
`models/mar.py` (qkv splits into query/key/value), so its published weights map one to one.

Shape letters: B batch, T = h * w tokens, C token channels, E width, U buffer tokens,
S = U + T the sequence the transformers read.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.layers.embed import condition_dropout
from jaxtok.layers.transformer import Transformer
from jaxtok.models.generators import diffusion, sampling
from jaxtok.models.presets import Presets

_NORMAL = nn.initializers.normal(0.02)


# -- masking (pure) ------------------------------------------------------------------------------

def random_ranks(key: jax.Array, batch: int, num_tokens: int) -> jax.Array:
  """int32 [B, T]: each token's place in a uniformly random generation order per sample."""
  keys = jax.random.split(key, batch)
  orders = jax.vmap(lambda k: jax.random.permutation(k, num_tokens))(keys)
  return jnp.argsort(orders, axis=1).astype(jnp.int32)


def mask_ratio(key: jax.Array, min_ratio: float = 0.7) -> jax.Array:
  """MAR's masking ratio: a normal of mean 1 and std 0.25 truncated to [min_ratio, 1]."""
  return 1.0 + 0.25 * jax.random.truncated_normal(key, (min_ratio - 1.0) / 0.25, 0.0)


def random_mask(key: jax.Array, batch: int, num_tokens: int, min_ratio: float = 0.7
                ) -> jax.Array:
  """Bool [B, T], True where masked: the first ceil(T * ratio) tokens of each sample's random
  order, one ratio per batch (as MAR)."""
  rank_key, ratio_key = jax.random.split(key)
  count = jnp.ceil(num_tokens * mask_ratio(ratio_key, min_ratio))
  return random_ranks(rank_key, batch, num_tokens) < count


def masked_after(step, num_steps: int, num_tokens: int, still_masked) -> jax.Array:
  """How many tokens stay masked after iteration `step` (0-based) of MAR's sampler:
  floor(T cos(pi/2 (step + 1) / num_steps)), at least 1 and at most still_masked - 1."""
  cosine = jnp.cos(jnp.pi / 2.0 * (jnp.asarray(step, jnp.float32) + 1.0) / num_steps)
  return jnp.maximum(1.0, jnp.minimum(still_masked - 1.0, jnp.floor(num_tokens * cosine)))


class MAR(Presets, nn.Module):
  """Class-conditional MAR: `__call__` (training) maps latents [B, *token_shape, C] and a mask
  to the decoder's condition z [B, T, E] for the diffusion head (`denoise`); `sample` is the
  jitted iterative sampler. Presets give the published sizes (16-channel latents of 16x16
  tokens, 64 buffer tokens): `MAR.from_preset("MAR-B")`.

  - encoder: Dense(C -> E) of the tokens; U buffer tokens in front holding the class
    embedding (a learned `fake_latent` where the class is dropped: CFG's null class);
    learned positions [S, E]; LayerNorm; ViT blocks (LayerNorm eps 1e-6, biased attention,
    GELU MLP 4E) over the unmasked tokens only (masked keys are hidden: MAR drops them);
    final LayerNorm.
  - decoder: Dense(E -> E); masked positions replaced by a learned mask token; learned
    positions [S, E]; ViT blocks over all; LayerNorm; the buffer dropped; plus learned
    diffusion positions [T, E].
  Attention-weight dropout (0.1 in MAR's recipe) is not offered; residual dropout is.
  """

  # MAR's sizes with their heads (counts of the authors' models, exact, on torch's meta
  # device with 16-channel latents on a 16x16 grid and 1000 classes).
  PRESETS = {
      "MAR-B": dict(width=768, depth=12, num_heads=12, head_width=1024, head_depth=6),
      "MAR-L": dict(width=1024, depth=16, num_heads=16, head_width=1280, head_depth=8),
      "MAR-H": dict(width=1280, depth=20, num_heads=16, head_width=1536, head_depth=12),
  }  # 207,924,768 / 478,326,304 / 942,403,104

  token_shape: tuple[int, int] = (16, 16)  # the KL tokenizer's latent grid (h, w)
  token_dim: int = 16  # C, latent channels
  num_classes: int = 1000  # 0: unconditional (only fake_latent)
  width: int = 768  # E, of encoder and decoder
  depth: int = 12  # blocks of the encoder, and of the decoder
  num_heads: int = 12
  buffer_size: int = 64  # U
  head_width: int = 1024
  head_depth: int = 3
  cond_dropout: float = 0.1  # probability of the null class in training (CFG)
  dropout: float = 0.1  # residual dropout in the transformer blocks
  # MAR's vae_scale_factor (0.2325 for its KL-16 VAE): the trainer multiplies the tokenizer's
  # latents by it (bringing them near unit variance, which the diffusion head's schedule
  # assumes) and `sample` divides by it, so samples are the tokenizer's latents again.
  latent_scale: float = 1.0
  sample_clip: float | None = None  # sampling clamps x0 predictions to +-this (None: MAR's)
  dtype: jnp.dtype = jnp.float32  # compute dtype; params, positions and the head's output f32
  scan_layers: bool = True

  CONTINUOUS_TOKENS = True  # samples latents for the tokenizer's decode_latents

  @property
  def num_tokens(self) -> int:
    """T, the tokens per sample."""
    return math.prod(self.token_shape)

  @property
  def codebook_size(self) -> int:
    """0: continuous tokens (a KL tokenizer's, whose codebook_size is 0 too)."""
    return 0

  def setup(self):
    if len(self.token_shape) != 2 or min(self.token_shape) < 1:
      raise ValueError(f"token_shape must be a latent grid (h, w); got {self.token_shape}")
    if not (math.isfinite(self.latent_scale) and self.latent_scale > 0):
      raise ValueError(f"latent_scale must be a finite number > 0; got {self.latent_scale}")
    seq = self.buffer_size + self.num_tokens

    def param(name, shape, init=_NORMAL, names=(None, "embed")):
      return self.param(name, nn.with_logical_partitioning(init, names[-len(shape):]), shape)

    self.class_embed = param("class_embed", (max(self.num_classes, 1), self.width))
    self.fake_latent = param("fake_latent", (self.width,))
    self.mask_token = param("mask_token", (self.width,))
    self.encoder_pos = param("encoder_pos", (seq, self.width))
    self.decoder_pos = param("decoder_pos", (seq, self.width))
    self.diffusion_pos = param("diffusion_pos", (self.num_tokens, self.width))
    dense = lambda names: dict(  # noqa: E731
        dtype=self.dtype, kernel_init=nn.with_logical_partitioning(
            nn.initializers.xavier_uniform(), names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), names[-1:]))
    self.z_proj = nn.Dense(self.width, **dense((None, "embed")))
    self.z_proj_norm = nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32)
    self.decoder_embed = nn.Dense(self.width, **dense(("mlp", "embed")))
    stack = lambda: Transformer(  # noqa: E731
        num_layers=self.depth, num_heads=self.num_heads, mlp_dim=4 * self.width,
        norm="layernorm", norm_epsilon=1e-6, mlp_activation="gelu", use_bias=True,
        dropout_rate=self.dropout, dtype=self.dtype, scan_layers=self.scan_layers)
    self.encoder, self.decoder = stack(), stack()
    self.head = diffusion.DiffusionHead(self.token_dim, self.head_width, self.head_depth,
                                        dtype=self.dtype)

  def example_inputs(self, batch: int) -> jax.Array:
    """Zero latents [B, *token_shape, C] (what `init` wants)."""
    return jnp.zeros((batch, *self.token_shape, self.token_dim), jnp.float32)

  def _class_tokens(self, labels_B, drop_B) -> jax.Array:
    """Class embeddings [B, E], the fake latent where dropped."""
    table = self.class_embed[jnp.clip(labels_B, 0, self.class_embed.shape[0] - 1)]
    return jnp.where(drop_B[:, None], self.fake_latent[None], table)

  def condition(self, tokens_BTC, mask_BT, labels_B, drop_B, train: bool = False):
    """The diffusion head's condition z [B, T, E] (f32) at every position, given the tokens
    [B, T, C] where mask_BT is False (masked values are ignored)."""
    batch, buffer = tokens_BTC.shape[0], self.buffer_size
    x_BTE = self.z_proj(tokens_BTC.astype(jnp.float32)).astype(jnp.float32)
    buffer_BUE = jnp.broadcast_to(self._class_tokens(labels_B, drop_B)[:, None],
                                  (batch, buffer, self.width))
    x_BSE = self.z_proj_norm(jnp.concatenate([buffer_BUE, x_BTE], 1) + self.encoder_pos[None])
    hidden_BS = jnp.concatenate([jnp.zeros((batch, buffer), jnp.bool_), mask_BT], axis=1)
    keys_B11S = ~hidden_BS[:, None, None, :]
    x_BSE = self.encoder(x_BSE, mask=keys_B11S, deterministic=not train)
    x_BSE = self.decoder_embed(x_BSE).astype(jnp.float32)
    x_BSE = jnp.where(hidden_BS[..., None], self.mask_token[None, None], x_BSE)
    x_BSE = self.decoder(x_BSE + self.decoder_pos[None], deterministic=not train)
    return x_BSE[:, buffer:].astype(jnp.float32) + self.diffusion_pos[None]

  def denoise(self, x_NC, t_N, z_NE) -> jax.Array:
    """The diffusion head: [eps, v] [N, 2C] (f32) of noised tokens at original timesteps."""
    return self.head(x_NC, t_N, z_NE)

  def __call__(self, tokens, labels=None, *, mask=None, train: bool = False, drop_cond=None):
    """Latents [B, *token_shape, C] and a bool mask [B, *token_shape] (True: masked; None:
    nothing masked) -> z [B, T, E] for the masked tokens' diffusion loss. labels: int [B]
    or None (null class); train enables dropout and class dropout (rng "dropout")."""
    shape = (*self.token_shape, self.token_dim)
    if tuple(np.shape(tokens))[1:] != shape:
      raise ValueError(f"tokens must be latents [B, {', '.join(map(str, shape))}]; got "
                       f"{np.shape(tokens)}")
    batch = tokens.shape[0]
    mask_BT = (jnp.zeros((batch, self.num_tokens), jnp.bool_) if mask is None
               else jnp.asarray(mask, jnp.bool_).reshape(batch, self.num_tokens))
    drop_B = self._drop(batch, labels, drop_cond, train)
    labels_B = jnp.zeros((batch,), jnp.int32) if labels is None else jnp.asarray(labels)
    z_BTE = self.condition(tokens.reshape(batch, self.num_tokens, -1), mask_BT, labels_B,
                           drop_B, train)
    if self.is_initializing():  # the head's parameters too
      flat = z_BTE.reshape(-1, self.width)
      self.denoise(jnp.zeros((flat.shape[0], self.token_dim)),
                   jnp.zeros((flat.shape[0],), jnp.int32), flat)
    return z_BTE

  def _drop(self, batch, labels, drop_cond, train) -> jax.Array:
    if labels is None or self.num_classes == 0:
      return jnp.ones((batch,), jnp.bool_)
    return condition_dropout(self, drop_cond, batch, self.cond_dropout, train)

  def sample(self, params, rng, labels=None, *, num_samples: int | None = None,
             num_steps: int = 64, cfg_scale: float = 1.0, cfg_schedule: str = "linear",
             temperature: float = 1.0, sampling_steps: int = 100, sampler: str = "ddpm",
             top_k: int = 0, top_p: float = 1.0, choice_temperature: float | None = None,
             clip_x0: float | None = None) -> jax.Array:
    """Samples the tokenizer's latents [B, *token_shape, C] (f32: the model's divided by
    `latent_scale`) in `num_steps` iterations, one jitted program per (num_steps,
    sampling_steps, ...) setting; the same seed gives the same latents.

    labels: int [B] class ids, or None for the null class (then num_samples gives B).
    cfg_scale != 1 guides the head's noise prediction with the null class, on MAR's
    "linear" schedule (1 + (scale - 1) (T - still masked) / T) or "constant".
    temperature scales the diffusion noise; sampling_steps respaces the 1000-step diffusion;
    sampler "ddpm" (MAR's) or "ddim". MAR-B's published setting: 256 iterations, cfg 2.9.
    clip_x0 (default: the `sample_clip` field) clamps the head's x0 predictions to
    [-clip_x0, clip_x0]: a small or young head is not precise enough for the cosine
    schedule's first steps (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), sqrt(abar) ~ 5e-5)
    and throws the latents far off without it. top_k, top_p and choice_temperature (options
    of the discrete samplers) must stay unset.
    """
    if top_k != 0 or top_p != 1.0 or choice_temperature is not None:
      raise ValueError(f"top_k, top_p and choice_temperature filter discrete tokens; MAR draws "
                       f"continuous ones: leave them unset (got top_k={top_k}, top_p={top_p}, "
                       f"choice_temperature={choice_temperature})")
    config = sampling.SamplingConfig(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule)
    if int(num_steps) != num_steps or not 1 <= num_steps <= self.num_tokens:
      raise ValueError(f"num_steps must be an integer in [1, {self.num_tokens}]; got "
                       f"{num_steps}")
    if not (np.isfinite(temperature) and temperature >= 0):
      raise ValueError(f"temperature must be a finite number >= 0; got {temperature}")
    batch = sampling.resolve_batch(labels, num_samples, self.num_classes, config)
    labels_B = (jnp.zeros((batch,), jnp.int32) if labels is None
                else jnp.asarray(labels, jnp.int32))
    drop_B = jnp.full((batch,), labels is None or self.num_classes == 0)
    variables = params if "params" in params else {"params": params}
    clip = self.sample_clip if clip_x0 is None else clip_x0
    latents = _sample(self, int(num_steps), config, float(temperature), int(sampling_steps),
                      sampler, None if clip is None else float(clip), variables, labels_B,
                      drop_B, sampling.as_key(rng))
    return latents / jnp.float32(self.latent_scale)


def max_due(num_steps: int, num_tokens: int) -> int:
  """The most tokens MAR's sampler draws in one iteration (plus 2: the jitted schedule runs in
  f32, whose floor may differ by one from this f64 count), at most T."""
  still, most = num_tokens, 0
  for step in range(num_steps):
    after = max(1, min(still - 1, math.floor(
        num_tokens * math.cos(math.pi / 2 * (step + 1) / num_steps))))
    due = still if step == num_steps - 1 else still - after
    most, still = max(most, due), after
  return min(num_tokens, most + 2)


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "config", "temperature",
                                             "sampling_steps", "sampler", "clip_x0"))
def _sample(model: MAR, num_steps: int, config, temperature: float, sampling_steps: int,
            sampler: str, clip_x0, variables, labels_B, drop_B, rng) -> jax.Array:
  """MAR's loop: each iteration runs the transformers on the current tokens and draws the
  tokens due (the next ones in each sample's order) with the head: the due positions come
  first in a fixed-size gather of `max_due` positions per sample, the rest of which is
  drawn and discarded. The iteration at step i uses fold_in(rng, i + 1)."""
  batch, num_tokens, channels = labels_B.shape[0], model.num_tokens, model.token_dim
  schedule = diffusion.make_schedule(1000, sampling_steps)
  width = max_due(num_steps, num_tokens)  # K
  rank_BT = random_ranks(jax.random.fold_in(rng, 0), batch, num_tokens)
  if config.guidance:
    labels_B = jnp.concatenate([labels_B, labels_B])
    drop_B = jnp.concatenate([drop_B, jnp.ones_like(drop_B)])
  double = (lambda a: jnp.concatenate([a, a])) if config.guidance else (lambda a: a)

  def body(step, carry):
    tokens_BTC, mask_BT = carry
    key = jax.random.fold_in(rng, step + 1)
    still = jnp.sum(mask_BT[0]).astype(jnp.float32)
    count = masked_after(step, num_steps, num_tokens, still)
    mask_next = rank_BT < count
    due_BT = jnp.where(step >= num_steps - 1, mask_BT, mask_BT & ~mask_next)
    pick_BK = jnp.argsort(~due_BT, axis=1, stable=True)[:, :width]  # due positions first
    z_BTE = model.apply(variables, double(tokens_BTC), double(mask_BT), labels_B, drop_B,
                        method=MAR.condition)
    z_NE = jnp.take_along_axis(z_BTE, double(pick_BK)[..., None], axis=1).reshape(
        -1, model.width)
    scale = (1.0 + (config.cfg_scale - 1.0) * (num_tokens - count) / num_tokens
             if config.cfg_schedule == "linear" else config.cfg_scale)

    def predict(x_NC, t_N):
      out = model.apply(variables, double(x_NC), double(t_N), z_NE, method=MAR.denoise)
      if not config.guidance:
        return out
      cond, uncond = jnp.split(out, 2)
      eps = sampling.cfg_logits(cond[:, :channels], uncond[:, :channels], scale)
      return jnp.concatenate([eps, cond[:, channels:]], axis=-1)

    noise = jax.random.normal(key, (batch * width, channels), jnp.float32)
    drawn_BKC = diffusion.sample_loop(predict, schedule, noise, jax.random.fold_in(key, 1),
                                      temperature=temperature, sampler=sampler,
                                      clip_x0=clip_x0).reshape(batch, width, channels)
    keep_BK1 = jnp.take_along_axis(due_BT, pick_BK, axis=1)[..., None]
    old_BKC = jnp.take_along_axis(tokens_BTC, pick_BK[..., None], axis=1)
    rows_B1 = jnp.arange(batch)[:, None]
    tokens_BTC = tokens_BTC.at[rows_B1, pick_BK].set(jnp.where(keep_BK1, drawn_BKC, old_BKC))
    return tokens_BTC, mask_next

  tokens = jnp.zeros((batch, num_tokens, channels), jnp.float32)
  tokens, _ = jax.lax.fori_loop(0, num_steps, body,
                                (tokens, jnp.ones((batch, num_tokens), jnp.bool_)))
  return tokens.reshape(batch, *model.token_shape, channels)
