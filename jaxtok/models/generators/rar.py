"""Randomized autoregressive generator: RAR (Yu et al. 2024, "Randomized Autoregressive Visual
Generation").

A GPT over a tokenizer's ids trained on randomly permuted token orders, with the probability
of a permuted (rather than raster) order annealed from 1 to 0 during training
(`random_order_ratio`); sampling is plain raster-order decoding with a KV cache. The layout
is that of bytedance/1d-tokenizer `modeling/rar.py`, so its published weights map one to one
(qkv splits into query/key/value); see `RAR`.

Shape letters: B batch, T = prod(token_shape) image tokens, S = T + 1 the sequence the
transformer reads ([cls, condition, tokens 0 .. T-2] in generation order), E width, N heads,
H head width, K codebook size, L layers.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.layers.adaln import AdaLNBlock, modulate
from jaxtok.layers.attention import Implementation, KVCache
from jaxtok.layers.embed import condition_dropout
from jaxtok.models.generators import sampling
from jaxtok.models.generators.ar import check_token_shape
from jaxtok.models.presets import Presets

_EMBED_INIT = nn.initializers.truncated_normal(0.02)  # RAR's init_weights
_ZERO = nn.initializers.zeros_init()
_PREFIX = 2  # the cls token and the condition token sit in front of the image tokens


# -- the maths of the randomized orders (pure) -------------------------------------------------

def random_order_ratio(step, anneal_start: int, anneal_end: int) -> jax.Array:
  """RAR's permutation annealing: the probability that a training sample is read in a random
  order at `step`: 1 up to anneal_start, 0 from anneal_end on, linear in between."""
  if not 0 <= anneal_start <= anneal_end:
    raise ValueError(f"need 0 <= anneal_start <= anneal_end; got {anneal_start}, {anneal_end}")
  step = jnp.asarray(step, jnp.float32)
  span = max(anneal_end - anneal_start, 1)
  return jnp.clip(1.0 - (step - anneal_start) / span, 0.0, 1.0)


def sample_orders(key: jax.Array, batch: int, num_tokens: int, ratio) -> jax.Array:
  """Generation orders int32 [B, T]: each row a uniformly random permutation of 0..T-1 with
  probability `ratio`, else the raster order."""
  perm_key, coin_key = jax.random.split(key)
  perms_BT = jax.vmap(lambda k: jax.random.permutation(k, num_tokens))(
      jax.random.split(perm_key, batch))
  random_B = jax.random.uniform(coin_key, (batch,)) < ratio
  raster_BT = jnp.broadcast_to(jnp.arange(num_tokens), (batch, num_tokens))
  return jnp.where(random_B[:, None], perms_BT, raster_BT).astype(jnp.int32)


def cfg_scale_at(step, num_steps: int, scale: float, power: float) -> jax.Array:
  """RAR's guidance schedule: 1 + (scale - 1) (1 - cos(pi (step / T)^power)) / 2 at 0-based
  `step` of T; power 0 keeps `scale` throughout (0^0 = 1, as in the authors' code)."""
  frac = jnp.asarray(step, jnp.float32) / num_steps
  ramp = (1.0 - jnp.cos(jnp.power(frac, power) * jnp.pi)) / 2.0
  return 1.0 + (scale - 1.0) * ramp


class _Scanned(AdaLNBlock):
  """The block as an `nn.scan` body; each layer's cache slice is a scanned input/output."""

  def __call__(self, x_BSE, cache, c_BSE, deterministic,  # pylint: disable=arguments-differ
               cache_index):
    if not isinstance(cache, KVCache):  # a dummy slice: the training forward, no cache
      return super().__call__(x_BSE, c_BSE, deterministic)[0], cache
    return super().__call__(x_BSE, c_BSE, deterministic, cache, cache_index)


# -- the model -----------------------------------------------------------------------------------

class RAR(Presets, nn.Module):
  """Class-conditional autoregressive transformer trained on randomized orders (RAR).

  `logits` (= `__call__`) is the teacher-forced forward in a given generation order; `sample`
  the jitted raster-order KV-cache sampler; `prefill` / `decode_step` / `init_cache` its
  pieces. Presets give the published sizes: `RAR.from_preset("RAR-B")`.

  sequence = [cls, condition, image tokens in generation order (the last one is never read)]
  - one embedding table [K + 1 + C + 1, E]: codes, an unused mask row, C classes, the null
    class (classifier-free guidance);
  - a learned cls token; learned positions `pos_embed` added at the grid position of each
    token (rows 0 and 1 for cls and condition, 2 + i for grid index i);
  - target-aware positions `target_pos_embed`: each input also gets the row 2 + i of the
    token it must predict next, so a model trained on random orders knows what it predicts;
  - the condition also enters every block through adaLN: c = condition embedding + a learned
    embedding of the sequence position (`step_embed`);
  - blocks: see AdaLNBlock; then a modulated LayerNorm without parameters and a biased head
    [E, K] (zero-initialised here; the authors' is not, which matters only from scratch).
  The position tables hold more rows than are read (T + 1024 and T + 100), as published.
  Attention-weight dropout (0.1 in RAR's recipe) is not offered; residual dropout is.
  """

  # The published sizes; counts of the authors' model with 1024 codes, 1000 classes, 256
  # tokens (exact, from their code on torch's meta device).
  PRESETS = {
      "RAR-B": dict(width=768, depth=24, num_heads=16, mlp_dim=3072),  # 260,923,648
      "RAR-L": dict(width=1024, depth=24, num_heads=16, mlp_dim=4096),  # 461,668,352
      "RAR-XL": dict(width=1280, depth=32, num_heads=16, mlp_dim=5120),  # 955,425,024
      "RAR-XXL": dict(width=1408, depth=40, num_heads=16, mlp_dim=6144),  # 1,498,520,704
  }

  codebook_size: int = 1024  # K (RAR uses the MaskGIT VQGAN's 1024 codes)
  token_shape: tuple[int, ...] = (16, 16)  # the tokenizer's grid: (h, w) or (n,)
  num_classes: int = 1000  # C; 0: unconditional (only the null class)
  width: int = 768  # E
  depth: int = 24  # L
  num_heads: int = 16  # N
  mlp_dim: int = 3072
  extra_positions: int = 1024  # rows of pos_embed / target_pos_embed beyond T
  extra_steps: int = 100  # rows of step_embed beyond T
  norm_epsilon: float = 1e-6
  cond_dropout: float = 0.1  # probability of replacing the class by the null class (CFG)
  resid_dropout: float = 0.1  # dropout on both residual branches of every block
  dtype: jnp.dtype = jnp.float32  # compute dtype; params and the residual stream stay f32
  attention_implementation: Implementation = None

  @property
  def num_tokens(self) -> int:
    """T, the image tokens per sample."""
    return math.prod(self.token_shape)

  @property
  def null_id(self) -> int:
    """The embedding row of the null class."""
    return self.codebook_size + 1 + self.num_classes

  def setup(self):
    check_token_shape(self.token_shape)
    if self.extra_positions < _PREFIX or self.extra_steps < 1:
      raise ValueError(f"extra_positions must be >= 2 and extra_steps >= 1; got "
                       f"{self.extra_positions}, {self.extra_steps}")

    def table(name, rows):
      return self.param(name, nn.with_logical_partitioning(_EMBED_INIT, (None, "embed")),
                        (rows, self.width))

    self.embed = nn.Embed(
        self.null_id + 1, self.width,
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")))
    self.cls_token = self.param("cls_token", nn.with_logical_partitioning(_ZERO, ("embed",)),
                                (self.width,))
    self.pos_embed = table("pos_embed", self.num_tokens + self.extra_positions)
    self.target_pos_embed = table("target_pos_embed", self.num_tokens + self.extra_positions)
    self.step_embed = table("step_embed", self.num_tokens + self.extra_steps)
    self.blocks = nn.scan(
        _Scanned, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=self.depth,
        metadata_params={nn.PARTITION_NAME: "layers"})(
            self.num_heads, self.mlp_dim, self.norm_epsilon, self.resid_dropout, self.dtype,
            self.attention_implementation)
    self.final_modulation = nn.Dense(
        2 * self.width, dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(_ZERO, ("embed", "mlp")),
        bias_init=nn.with_logical_partitioning(_ZERO, ("mlp",)))
    self.final_norm = nn.LayerNorm(epsilon=self.norm_epsilon, use_scale=False, use_bias=False,
                                   dtype=jnp.float32)
    self.head = nn.Dense(
        self.codebook_size, dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(_ZERO, ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(_ZERO, ("vocab",)))

  # -- pieces ---------------------------------------------------------------------------------

  def _condition(self, labels_B, drop_B) -> jax.Array:
    """Condition embeddings [B, E] (f32): the class row, or the null class where dropped."""
    ids_B = jnp.where(drop_B, self.null_id, self.codebook_size + 1 + labels_B)
    return self.embed(ids_B)

  def _run_blocks(self, x_BSE, c_BSE, deterministic, cache=None, cache_index=0):
    if cache is None:  # the scan wants a per-layer input: a dummy of length L
      x_BSE, _ = self.blocks(x_BSE, jnp.zeros((self.depth,)), c_BSE, deterministic, None)
      return x_BSE, None
    if cache.k.shape[0] != self.depth:
      raise ValueError(f"cache must be stacked over depth={self.depth} layers; got "
                       f"cache.k.shape={cache.k.shape}")
    return self.blocks(x_BSE, cache, c_BSE, True, cache_index)

  def _head(self, h_BSE, c_BSE) -> jax.Array:
    scale, shift = jnp.split(self.final_modulation(nn.silu(c_BSE)).astype(jnp.float32), 2, -1)
    return self.head(modulate(self.final_norm(h_BSE), shift, scale)).astype(jnp.float32)

  def _drop_mask(self, batch: int, labels, drop_cond, train: bool) -> jax.Array:
    """True where the null class replaces the label: no labels, drop_cond, condition dropout
    in training, or an unconditional model."""
    if labels is None:
      drop_cond = jnp.ones((batch,), jnp.bool_)
    drop_B = condition_dropout(self, drop_cond, batch, self.cond_dropout, train)
    return drop_B | (self.num_classes == 0)

  def _labels(self, batch: int, labels) -> jax.Array:
    if labels is None:
      return jnp.zeros((batch,), jnp.int32)
    sampling.check_labels(labels, self.num_classes)
    if np.shape(labels)[0] != batch:
      raise ValueError(f"labels must have one class id per sample, shape ({batch},); got "
                       f"{np.shape(labels)}")
    return jnp.asarray(labels, jnp.int32)

  # -- training forward -----------------------------------------------------------------------

  def logits(self, tokens: jax.Array, labels: jax.Array | None = None, *,
             orders: jax.Array | None = None, train: bool = False,
             drop_cond: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits in a generation order: tokens [B, *token_shape] -> [B,
    *token_shape, K] f32, in grid order.

    logits[:, i] predicts grid token i from the condition and the tokens that come before i
    in `orders` (int [B, T], each row a permutation of the flat grid indices; None: raster
    order, the sampling order). labels: int [B] in [0, num_classes), or None for the null
    class. train=True enables dropout and condition dropout (rng stream "dropout");
    drop_cond: optional bool [B], True to use the null class for that sample.
    """
    sampling.check_token_grid(tokens, self.token_shape, self.codebook_size)
    batch, num_tokens = tokens.shape[0], self.num_tokens
    if orders is None:
      orders = jnp.broadcast_to(jnp.arange(num_tokens), (batch, num_tokens))
    elif tuple(np.shape(orders)) != (batch, num_tokens):
      raise ValueError(f"orders must be [B, T] = {(batch, num_tokens)} (a permutation of the "
                       f"grid per sample); got {np.shape(orders)}")
    order_BT = jnp.asarray(orders, jnp.int32)
    cond_BE = self._condition(self._labels(batch, labels),
                              self._drop_mask(batch, labels, drop_cond, train))
    ids_BT = jnp.take_along_axis(tokens.reshape(batch, num_tokens), order_BT, axis=1)
    x_BTE = (self.embed(ids_BT[:, :-1]) + self.pos_embed[_PREFIX + order_BT[:, :-1]]
             + self.target_pos_embed[_PREFIX + order_BT[:, 1:]])
    cls_B1E = jnp.broadcast_to(self.cls_token + self.pos_embed[0], (batch, 1, self.width))
    cond_B1E = (cond_BE + self.pos_embed[1][None]
                + self.target_pos_embed[_PREFIX + order_BT[:, 0]])[:, None]
    x_BSE = jnp.concatenate([cls_B1E, cond_B1E, x_BTE], axis=1)
    c_BSE = cond_BE[:, None] + self.step_embed[None, :num_tokens + 1]
    h_BSE, _ = self._run_blocks(x_BSE, c_BSE, not train)
    out_BTK = self._head(h_BSE[:, 1:], c_BSE[:, 1:])  # out[:, j] predicts token order[j]
    inverse_BT = jnp.argsort(order_BT, axis=1)
    logits_BTK = jnp.take_along_axis(out_BTK, inverse_BT[..., None], axis=1)
    return logits_BTK.reshape(batch, *self.token_shape, self.codebook_size)

  def __call__(self, tokens, labels=None, *, orders=None, train=False, drop_cond=None):
    """Same as `logits`."""
    return self.logits(tokens, labels, orders=orders, train=train, drop_cond=drop_cond)

  # -- decoding (raster order) ----------------------------------------------------------------

  def init_cache(self, batch_size: int, dtype=None) -> KVCache:
    """An empty KV cache [L, B, T + 1, N, H] (dtype: the compute dtype)."""
    return KVCache.zeros(batch_size, self.num_tokens + 1, self.num_heads,
                         self.width // self.num_heads, dtype or self.dtype,
                         num_layers=self.depth)

  def prefill(self, labels_B: jax.Array, drop_B: jax.Array, cache: KVCache):
    """Feeds cls and condition; returns (logits [B, K] f32 of token 0, condition [B, E],
    cache)."""
    cond_BE = self._condition(labels_B, drop_B | (self.num_classes == 0))
    batch = cond_BE.shape[0]
    cls_B1E = jnp.broadcast_to(self.cls_token + self.pos_embed[0], (batch, 1, self.width))
    cond_B1E = (cond_BE + self.pos_embed[1][None]
                + self.target_pos_embed[_PREFIX][None])[:, None]
    c_B2E = cond_BE[:, None] + self.step_embed[None, :_PREFIX]
    h_B2E, cache = self._run_blocks(jnp.concatenate([cls_B1E, cond_B1E], axis=1), c_B2E, True,
                                    cache, 0)
    return self._head(h_B2E[:, -1], c_B2E[:, -1]), cond_BE, cache

  def decode_step(self, token_B: jax.Array, step: jax.Array, cond_BE: jax.Array,
                  cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feeds image token `step` (raster order); returns the logits [B, K] (f32) of token
    step + 1 and the cache."""
    row = _PREFIX + jnp.asarray(step, jnp.int32)
    x_BE = (self.embed(token_B) + self.pos_embed[row][None]
            + self.target_pos_embed[row + 1][None])
    c_BE = cond_BE + self.step_embed[row][None]
    h_B1E, cache = self._run_blocks(x_BE[:, None], c_BE[:, None], True, cache, row)
    return self._head(h_B1E[:, 0], c_BE), cache

  def sample(self, params, rng, labels=None, *, num_samples: int | None = None,
             cfg_scale: float = 1.0, cfg_power: float = 0.0, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Samples int32 token ids [B, *token_shape] in raster order, one jitted loop with a KV
    cache. Call on the unbound module: `model.sample(variables, rng, labels, cfg_scale=4.)`.

    params: the variables or the bare params tree. rng: a key or an int seed (same seed, same
    samples). labels: int [B] class ids; None for the null class (then num_samples gives B).
    cfg_scale != 1 runs the null class alongside (batch 2B) with RAR's schedule
    (`cfg_scale_at`; cfg_power 0: constant; the authors' RAR-B setting: 16.0, power 2.75).
    temperature (0: greedy), top_k (0: off), top_p (1: off): see sampling.SamplingConfig.
    """
    config = sampling.SamplingConfig(temperature, top_k, top_p, cfg_scale)
    if not (np.isfinite(cfg_power) and cfg_power >= 0):
      raise ValueError(f"cfg_power must be a finite number >= 0; got {cfg_power}")
    batch = sampling.resolve_batch(labels, num_samples, self.num_classes, config)
    labels_B = self._labels(batch, labels)
    drop_B = self._drop_mask(batch, labels, None, False)
    if config.guidance:  # conditional rows first, then the same rows with the null class
      labels_B = jnp.concatenate([labels_B, labels_B])
      drop_B = jnp.concatenate([drop_B, jnp.ones_like(drop_B)])
    variables = params if "params" in params else {"params": params}
    cache = self.init_cache(labels_B.shape[0])
    tokens, _ = _sample(self, config, float(cfg_power), variables, cache, labels_B, drop_B,
                        sampling.as_key(rng))
    return tokens


@functools.partial(jax.jit, static_argnames=("model", "config", "cfg_power"),
                   donate_argnames=("cache",))
def _sample(model: RAR, config: sampling.SamplingConfig, cfg_power: float, variables,
            cache: KVCache, labels_B, drop_B, rng) -> tuple[jax.Array, KVCache]:
  """Prefill, then T - 1 decoding steps in a fori_loop; the draw of step t uses
  fold_in(rng, t). Returns (tokens, final cache), the cache so XLA can reuse its buffer."""
  num_tokens = model.num_tokens
  batch = labels_B.shape[0] // (2 if config.guidance else 1)

  def draw(step, logits):
    logits = jnp.asarray(logits, jnp.float32)
    if config.guidance:
      cond, uncond = jnp.split(logits, 2, axis=0)
      logits = sampling.cfg_logits(
          cond, uncond, cfg_scale_at(step, num_tokens, config.cfg_scale, cfg_power))
    return sampling.sample_logits(jax.random.fold_in(rng, step), logits, config)

  logits, cond_BE, cache = model.apply(variables, labels_B, drop_B, cache, method=RAR.prefill)
  tokens_BT = jnp.zeros((batch, num_tokens), jnp.int32).at[:, 0].set(draw(0, logits))

  def body(step, carry):
    tokens_BT, cache = carry
    token_B = tokens_BT[:, step]
    if config.guidance:
      token_B = jnp.concatenate([token_B, token_B])
    logits, cache = model.apply(variables, token_B, step, cond_BE, cache,
                                method=RAR.decode_step)
    tokens_BT = jax.lax.dynamic_update_slice(tokens_BT, draw(step + 1, logits)[:, None],
                                             (0, step + 1))
    return tokens_BT, cache

  tokens_BT, cache = jax.lax.fori_loop(0, num_tokens - 1, body, (tokens_BT, cache))
  return tokens_BT.reshape(batch, *model.token_shape), cache
