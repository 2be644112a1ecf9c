"""Autoregressive token generator: LlamaGen's GPT (Sun et al. 2024, "Autoregressive Model Beats
Diffusion: Llama for Scalable Image Generation").

The layout is that of FoundationVision/LlamaGen `autoregressive/models/gpt.py`
(class-conditional "c2i"), so its published weights map one to one (wqkv splits into
query/key/value); see `GPT` for the details. Initialisers are jaxtok's (normal 0.02
embeddings, xavier-uniform projections); LlamaGen's differ, which matters only when training
from scratch.

Shape letters: B batch, T = prod(token_shape) image tokens, P condition tokens, S = P + T - 1
the sequence the transformer reads, E width, K codebook size, C prefix_dim.
"""

import functools
import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.layers.attention import Implementation, KVCache
from jaxtok.layers.embed import condition_dropout
from jaxtok.layers.rope import grid_positions
from jaxtok.layers.transformer import Transformer
from jaxtok.models.generators import sampling
from jaxtok.models.presets import Presets

_EMBED_INIT = nn.initializers.normal(0.02)  # LlamaGen's initializer_range


def llamagen_mlp_dim(width: int, multiple_of: int = 256) -> int:
  """LlamaGen's (and Llama's) SwiGLU hidden width: int(2/3 * 4E) rounded up to multiple_of."""
  hidden = int(2 * 4 * width / 3)
  return -(-hidden // multiple_of) * multiple_of


def token_positions(token_shape: tuple[int, ...], index: jax.Array) -> jax.Array:
  """RoPE positions of flat grid indices [...]: (row, column) [..., 2] for a 2D grid, the
  index itself for a 1D sequence."""
  index = jnp.asarray(index, jnp.int32)
  if len(token_shape) == 2:
    return grid_positions(*token_shape)[index]
  return index


def check_token_shape(token_shape) -> None:
  if len(token_shape) not in (1, 2) or any(int(s) < 1 for s in token_shape):
    raise ValueError(
        f"token_shape must be (n,) for 1D tokenizers or (h, w) for 2D grids; got {token_shape}")


class ConditionEmbed(nn.Module):
  """Condition tokens [B, P, E]: the class token, then the projected prefix embeddings.

  Where `drop` is True the null class (id num_classes) and the null prefix replace them.
  """

  num_classes: int  # real classes; the table has one more row, the null class
  width: int  # E
  num_prefix_tokens: int = 0  # P - 1
  prefix_dim: int = 0  # C

  @nn.compact
  def __call__(self, labels_B: jax.Array, prefix_BPC: jax.Array | None,
               drop_B: jax.Array) -> jax.Array:
    table = nn.Embed(
        self.num_classes + 1, self.width, name="class_embed",
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("classes", "embed")))
    tokens_BPE = table(jnp.where(drop_B, self.num_classes, labels_B))[:, None]
    if not self.num_prefix_tokens:
      return tokens_BPE
    null_PC = self.param(
        "null_prefix",
        nn.with_logical_partitioning(nn.initializers.normal(self.prefix_dim**-0.5),
                                     (None, None)),
        (self.num_prefix_tokens, self.prefix_dim))
    if prefix_BPC is None:  # no prefix given: the null prefix
      prefix_BPC = jnp.broadcast_to(null_PC, (drop_B.shape[0], *null_PC.shape))
    prefix_BPC = jnp.where(drop_B[:, None, None], null_PC, prefix_BPC)
    h = nn.Dense(self.width, use_bias=False, name="prefix_fc1",
                 kernel_init=nn.with_logical_partitioning(_EMBED_INIT, (None, "mlp")))(prefix_BPC)
    h = nn.Dense(self.width, use_bias=False, name="prefix_fc2",
                 kernel_init=nn.with_logical_partitioning(_EMBED_INIT, ("mlp", "embed")))(
                     nn.gelu(h, approximate=True))
    return jnp.concatenate([tokens_BPE, h.astype(tokens_BPE.dtype)], axis=1)


class GPT(Presets, nn.Module):
  """Class-conditional (optionally prefix-conditioned) autoregressive token transformer.

  `logits` (= `__call__`) is the teacher-forced training forward; `sample` the jitted
  KV-cache sampler; `prefill` / `decode_step` / `init_cache` its pieces. Presets give the
  sizes only: `GPT.from_preset("GPT-B", codebook_size=16384)`.

  sequence = [P condition tokens, image tokens 0 .. T-2] -> logits for image tokens 0 .. T-1
  - condition tokens: a class embedding with num_classes + 1 rows (the last is the null class
    of classifier-free guidance, used where the condition is dropped), then optionally P - 1
    prefix embeddings (other conditions) through a 2-layer bias-free tanh-GELU MLP, as
    LlamaGen's caption embedder, with a learned null prefix;
  - token embedding [K, E]; dropout on all input embeddings ("token dropout", p = 0.1);
  - pre-norm blocks: RMSNorm (eps 1e-5), bias-free attention, SwiGLU MLP of hidden width
    round_up(int(8E/3), 256), dropout on both residual branches (p = 0.1);
  - final RMSNorm, bias-free zero-initialised output head [E, K];
  - 2D RoPE over the (row, column) of the token grid, or 1D RoPE for 1D tokenizers (TiTok),
    or learned positions. Under RoPE the condition tokens' q and k are zero: LlamaGen's rotary
    table holds zeros (not the identity) for them, and exact conversion needs the same.
  """

  # LlamaGen's class-conditional sizes and its parameter counts with 16384 codes and 1000
  # classes + the null class, counted from the authors' gpt.py built on torch's meta device
  # (tools/fixtures/llamagen.py; tests/convert/test_llamagen_convert.py checks them).
  PRESETS = {
      "GPT-B": dict(width=768, depth=12, num_heads=12),  # 110,888,448
      "GPT-L": dict(width=1024, depth=24, num_heads=16),  # 342,910,976
      "GPT-XL": dict(width=1280, depth=36, num_heads=20),  # 774,699,520
      "GPT-XXL": dict(width=1536, depth=48, num_heads=24),  # 1,410,972,672
      "GPT-XXXL": dict(width=2560, depth=48, num_heads=40),  # 3.9 B (no released weights)
      # SwiGLU width round_up(int(8 * 3200 / 3), 256) = 8704; head dim 100.
      "GPT-3B": dict(width=3200, depth=24, num_heads=32),  # 3,096,659,200
  }

  codebook_size: int  # K, the tokenizer's number of codes
  token_shape: tuple[int, ...] = (16, 16)  # the tokenizer's grid: (h, w) or (n,)
  num_classes: int = 1000  # 0: unconditional (only the null class token)
  width: int = 768  # E
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int | None = None  # None: llamagen_mlp_dim(width)
  num_prefix_tokens: int = 0  # extra condition embeddings after the class token
  prefix_dim: int = 0  # C, their input width
  positions: Literal["rope", "learned"] = "rope"  # rope: 2D for (h, w) grids, 1D for (n,)
  rope_theta: float = 10_000.0
  norm_epsilon: float = 1e-5
  cond_dropout: float = 0.1  # probability of replacing the condition by the null one (CFG)
  token_dropout: float = 0.1  # dropout on the input embeddings
  resid_dropout: float = 0.1  # dropout on both residual branches of every block
  dtype: jnp.dtype = jnp.float32  # compute dtype; params and the residual stream stay f32
  scan_layers: bool = True
  scan_unroll: int | bool = 1  # see Transformer.scan_unroll
  attention_implementation: Implementation = None

  @property
  def num_tokens(self) -> int:
    """T, the image tokens per sample."""
    return math.prod(self.token_shape)

  @property
  def num_cond_tokens(self) -> int:
    """P, the condition tokens in front of the image tokens."""
    return 1 + self.num_prefix_tokens

  def setup(self):
    check_token_shape(self.token_shape)
    if self.num_prefix_tokens and self.prefix_dim < 1:
      raise ValueError(f"num_prefix_tokens={self.num_prefix_tokens} needs prefix_dim >= 1; "
                       f"got prefix_dim={self.prefix_dim}")
    self.cond_embed = ConditionEmbed(self.num_classes, self.width, self.num_prefix_tokens,
                                     self.prefix_dim)
    self.token_embed = nn.Embed(
        self.codebook_size, self.width,
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")))
    if self.positions == "learned":
      self.pos_embed = self.param(
          "pos_embed", nn.with_logical_partitioning(_EMBED_INIT, (None, "embed")),
          (self.num_tokens, self.width))
    elif self.positions != "rope":
      raise ValueError(f"positions must be 'rope' or 'learned'; got {self.positions!r}")
    rope = None
    if self.positions == "rope":
      rope = "2d" if len(self.token_shape) == 2 else "1d"
    self.embed_dropout = nn.Dropout(self.token_dropout)
    self.transformer = Transformer(
        num_layers=self.depth, num_heads=self.num_heads,
        mlp_dim=self.mlp_dim or llamagen_mlp_dim(self.width), norm="rmsnorm",
        norm_epsilon=self.norm_epsilon, mlp_activation="swiglu", use_bias=False, causal=True,
        rope=rope, rope_theta=self.rope_theta, dropout_rate=self.resid_dropout,
        dtype=self.dtype, attention_implementation=self.attention_implementation,
        scan_layers=self.scan_layers, scan_unroll=self.scan_unroll)
    self.head = nn.Dense(
        self.codebook_size, use_bias=False, dtype=self.dtype,
        kernel_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                 ("embed", "vocab")))

  # -- pieces ---------------------------------------------------------------------------------

  def _embed_tokens(self, tokens_BT: jax.Array, index_T: jax.Array) -> jax.Array:
    """Image tokens at flat grid indices index_T -> embeddings [B, T, E] (f32)."""
    x_BTE = self.token_embed(tokens_BT)
    if self.positions == "learned":
      x_BTE = x_BTE + self.pos_embed[index_T][None]
    return x_BTE

  def _rope_args(self, index_T: jax.Array, is_cond_T: jax.Array):
    """(positions, zero_qk) for the transformer: condition tokens get position 0 and zero
    q/k under RoPE; learned positions need neither."""
    if self.positions != "rope":
      return None, None
    positions = token_positions(self.token_shape, jnp.where(is_cond_T, 0, index_T))
    return positions, is_cond_T

  def _drop_mask(self, batch: int, drop_cond, train: bool) -> jax.Array:
    return condition_dropout(self, drop_cond, batch, self.cond_dropout, train)

  def _null_labels(self, batch: int) -> jax.Array:
    return jnp.full((batch,), self.num_classes, jnp.int32)

  def _check_cond(self, batch: int, labels, prefix) -> None:
    if labels is not None:
      sampling.check_labels(labels, self.num_classes)
      if np.shape(labels)[0] != batch:
        raise ValueError(f"labels must have one class id per sample, shape ({batch},); got "
                         f"{np.shape(labels)}")
    if prefix is not None:
      expected = (batch, self.num_prefix_tokens, self.prefix_dim)
      if not self.num_prefix_tokens or tuple(np.shape(prefix)) != expected:
        raise ValueError(f"prefix must have shape {expected} (num_prefix_tokens, prefix_dim); "
                         f"got {np.shape(prefix)}")
    elif self.num_prefix_tokens and labels is not None:
      raise ValueError(f"this model reads num_prefix_tokens={self.num_prefix_tokens} prefix "
                       "embeddings: pass prefix [B, P, C] with the labels")

  # -- training forward -----------------------------------------------------------------------

  def logits(self, tokens: jax.Array, labels: jax.Array | None = None, *,
             prefix: jax.Array | None = None, train: bool = False,
             drop_cond: jax.Array | None = None) -> jax.Array:
    """Teacher-forced next-token logits: tokens [B, *token_shape] -> [B, *token_shape, K] f32.

    logits[:, i] is the prediction of token i from the condition and tokens before i.
    labels: int [B] in [0, num_classes), or None for the null class (unconditional).
    prefix: [B, P-1, C] extra condition embeddings when the model has them (required with
    labels; None without labels gives the null prefix). train=True
    enables dropout and condition dropout (rng stream "dropout"). drop_cond: optional bool
    [B], True to replace that sample's condition by the null one.
    """
    sampling.check_token_grid(tokens, self.token_shape, self.codebook_size)
    batch, num_tokens, num_cond = tokens.shape[0], self.num_tokens, self.num_cond_tokens
    self._check_cond(batch, labels, prefix)
    labels_B = self._null_labels(batch) if labels is None else labels
    cond_BPE = self.cond_embed(labels_B, prefix, self._drop_mask(batch, drop_cond, train))
    index_T = jnp.arange(num_tokens - 1)
    x_BTE = self._embed_tokens(tokens.reshape(batch, num_tokens)[:, :-1], index_T)
    x_BSE = self.embed_dropout(jnp.concatenate([cond_BPE, x_BTE], axis=1),
                               deterministic=not train)
    is_cond_S = jnp.arange(num_cond + num_tokens - 1) < num_cond
    index_S = jnp.concatenate([jnp.zeros((num_cond,), jnp.int32), index_T])
    positions, zero_qk = self._rope_args(index_S, is_cond_S)
    h_BSE = self.transformer(x_BSE, positions=positions, zero_qk=zero_qk,
                             deterministic=not train)
    logits_BTK = self.head(h_BSE[:, num_cond - 1:]).astype(jnp.float32)
    return logits_BTK.reshape(batch, *self.token_shape, self.codebook_size)

  def __call__(self, tokens, labels=None, *, prefix=None, train=False, drop_cond=None):
    """Same as `logits`."""
    return self.logits(tokens, labels, prefix=prefix, train=train, drop_cond=drop_cond)

  # -- decoding -------------------------------------------------------------------------------

  def init_cache(self, batch_size: int, dtype=None) -> KVCache:
    """An empty KV cache [L, B, N, S, H] for S = P + T - 1 (dtype: the compute dtype)."""
    return KVCache.zeros(batch_size, self.num_cond_tokens + self.num_tokens - 1,
                         self.num_heads, self.width // self.num_heads, dtype or self.dtype,
                         num_layers=self.depth, heads_first=True)

  def prefill(self, labels_B: jax.Array, prefix_BPC: jax.Array | None, drop_B: jax.Array,
              cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feeds the condition tokens; returns the logits [B, K] (f32) of image token 0."""
    cond_BPE = self.cond_embed(labels_B, prefix_BPC, drop_B)
    num_cond = self.num_cond_tokens
    positions, zero_qk = self._rope_args(jnp.zeros((num_cond,), jnp.int32),
                                         jnp.ones((num_cond,), jnp.bool_))
    h_BPE, cache = self.transformer(cond_BPE, positions=positions, zero_qk=zero_qk,
                                    cache=cache, cache_index=0)
    return self.head(h_BPE[:, -1]).astype(jnp.float32), cache

  def decode_step(self, token_B: jax.Array, step: jax.Array,
                  cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feeds image token `step`; returns the logits [B, K] (f32) of token step + 1."""
    index_1 = jnp.reshape(step, (1,)).astype(jnp.int32)
    x_B1E = self._embed_tokens(token_B[:, None], index_1)
    positions, _ = self._rope_args(index_1, jnp.zeros((1,), jnp.bool_))
    h_B1E, cache = self.transformer(x_B1E, positions=positions, cache=cache,
                                    cache_index=self.num_cond_tokens + step)
    return self.head(h_B1E[:, 0]).astype(jnp.float32), cache

  def sample(self, params, rng, labels=None, *, num_samples: int | None = None,
             prefix=None, cfg_scale: float = 1.0,
             cfg_schedule: sampling.CfgSchedule = "constant", temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Samples int32 token ids [B, *token_shape] in one jitted loop with a KV cache.

    Call on the unbound module: `model.sample(variables, rng, labels, cfg_scale=2.0)`.
    params: the variables ({"params": ...}) or the bare params tree. rng: a key or an int
    seed; the same seed gives the same samples. labels: int [B] class ids; None for the
    null class (then num_samples, or the prefix, gives B). prefix: [B, P-1, C] when the
    model has prefix tokens (None: the null prefix). cfg_scale != 1 runs the null condition
    alongside (batch 2B); cfg_schedule "linear" ramps the scale over the T steps.
    temperature (0: greedy), top_k (0: off) and top_p (1: off) shape each draw; see
    sampling.SamplingConfig.
    """
    config = sampling.SamplingConfig(temperature, top_k, top_p, cfg_scale, cfg_schedule)
    if labels is None and prefix is not None:  # conditioned on the prefix alone
      batch = int(np.shape(prefix)[0])
      if num_samples is not None and int(num_samples) != batch:
        raise ValueError(f"num_samples={num_samples} disagrees with prefix of shape "
                         f"{np.shape(prefix)}: pass one prefix per sample")
    else:
      batch = sampling.resolve_batch(labels, num_samples, self.num_classes, config)
    self._check_cond(batch, labels, prefix)
    labels_B = (self._null_labels(batch) if labels is None
                else jnp.asarray(labels, jnp.int32))
    drop_B = jnp.zeros((batch,), jnp.bool_)
    if config.guidance:  # conditional rows first, then the same rows with the null condition
      labels_B = jnp.concatenate([labels_B, labels_B])
      drop_B = jnp.concatenate([drop_B, jnp.ones_like(drop_B)])
      prefix = None if prefix is None else jnp.concatenate([prefix, prefix])
    variables = params if "params" in params else {"params": params}
    cache = self.init_cache(labels_B.shape[0])
    tokens, _ = _sample(self, config, variables, cache, labels_B, drop_B, prefix,
                        sampling.as_key(rng))
    return tokens


def _draw(config: sampling.SamplingConfig, num_tokens: int, rng, step, logits) -> jax.Array:
  """Token `step` from the [cond; uncond] logits: guidance, then a draw keyed fold_in(rng, step)."""
  guided = sampling.guided_logits(logits, step, num_tokens, config)
  return sampling.sample_logits(jax.random.fold_in(rng, step), guided, config)


def sample_step(model: GPT, config: sampling.SamplingConfig, variables, rng, step,
                tokens_BT: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
  """One iteration of the sampling loop: feeds token `step`, draws token step + 1 into
  tokens_BT [B, T]. Public so that tools/bench/roofline.py can compile the loop body alone."""
  token_B = tokens_BT[:, step]
  if config.guidance:
    token_B = jnp.concatenate([token_B, token_B])
  logits, cache = model.apply(variables, token_B, step, cache, method=GPT.decode_step)
  token_B = _draw(config, model.num_tokens, rng, step + 1, logits)
  return jax.lax.dynamic_update_slice(tokens_BT, token_B[:, None], (0, step + 1)), cache


@functools.partial(jax.jit, static_argnames=("model", "config"), donate_argnames=("cache",))
def _sample(model: GPT, config: sampling.SamplingConfig, variables, cache: KVCache,
            labels_B, drop_B, prefix_BPC, rng) -> tuple[jax.Array, KVCache]:
  """Prefill, then T - 1 decoding steps in a fori_loop; the draw of step t uses
  fold_in(rng, t). Returns (tokens, final cache): returning the cache lets XLA write it in
  place of the donated input buffer instead of allocating a second one."""
  num_tokens = model.num_tokens
  batch = labels_B.shape[0] // (2 if config.guidance else 1)
  logits, cache = model.apply(variables, labels_B, prefix_BPC, drop_B, cache,
                              method=GPT.prefill)
  tokens_BT = jnp.zeros((batch, num_tokens), jnp.int32).at[:, 0].set(
      _draw(config, num_tokens, rng, 0, logits))

  def body(step, carry):
    return sample_step(model, config, variables, rng, step, *carry)

  tokens_BT, cache = jax.lax.fori_loop(0, num_tokens - 1, body, (tokens_BT, cache))
  return tokens_BT.reshape(batch, *model.token_shape), cache
