"""MaskGIT: Chang et al. 2022, "MaskGIT: Masked Generative Image Transformer".

A bidirectional transformer reads [class token, T image tokens, some replaced by the mask id
K] and predicts the code at every position. Training masks a cosine-scheduled number of
tokens per sample; sampling follows google-research/maskgit `libml/parallel_decode.py` (see
`MaskGIT.sample`). The schedule, masking and re-masking are pure functions, tested without
Flax. Blocks are jaxtok's pre-norm ones (the original is a post-norm BERT), shared with GPT.

Shape letters: B batch, T = prod(token_shape) image tokens, S steps, E width, K codebook size.
"""

import functools
import math
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.layers.attention import Implementation
from jaxtok.layers.embed import condition_dropout
from jaxtok.layers.transformer import MlpActivation, NormKind, Transformer
from jaxtok.models.generators import sampling
from jaxtok.models.generators.ar import check_token_shape, token_positions
from jaxtok.models.presets import Presets

_EMBED_INIT = nn.initializers.normal(0.02)


def cosine_schedule(ratio: jax.Array) -> jax.Array:
  """Masked fraction cos(pi/2 * ratio): 1 at ratio 0, 0 at ratio 1."""
  return jnp.cos(0.5 * jnp.pi * jnp.asarray(ratio, jnp.float32))


def random_mask(rng: jax.Array, batch_size: int, num_tokens: int) -> jax.Array:
  """Training mask, bool [B, T], True where a token is replaced by the mask id.

  Each sample draws u ~ U[0, 1) and masks ceil(cos(pi/2 u) * T) tokens (between 1 and T)
  at uniformly random positions.
  """
  rng_ratio, rng_pos = jax.random.split(rng)
  ratio_B = cosine_schedule(jax.random.uniform(rng_ratio, (batch_size,)))
  count_B = jnp.clip(jnp.ceil(ratio_B * num_tokens), 1, num_tokens).astype(jnp.int32)
  scores_BT = jax.random.uniform(rng_pos, (batch_size, num_tokens))
  ranks_BT = jnp.argsort(jnp.argsort(scores_BT, axis=-1), axis=-1)
  return ranks_BT < count_B[:, None]


def num_masked_after_step(step, num_steps: int, num_masked_start, num_masked_now):
  """How many tokens stay masked after `step` (0-based) of `num_steps`; see MaskGIT.sample.

  Broadcasts over the batch ([B] counts); 0 after the last step. The 1e-4 slack keeps f32
  rounding from flooring an exact product (256 * cos(pi/3) = 128) one below.
  """
  ratio = (jnp.asarray(step, jnp.float32) + 1.0) / num_steps
  scheduled = jnp.floor(num_masked_start * cosine_schedule(ratio) + 1e-4).astype(jnp.int32)
  count = jnp.maximum(1, jnp.minimum(num_masked_now - 1, scheduled))
  return jnp.where(step >= num_steps - 1, 0, count)


def remask_lowest_confidence(rng: jax.Array, log_prob_BT: jax.Array, known_BT: jax.Array,
                             count_B: jax.Array, temperature) -> jax.Array:
  """Bool [B, T]: the `count` least confident of the newly drawn tokens, to mask again.

  confidence = log p(drawn) + temperature * Gumbel noise; already known tokens have
  confidence +inf, so they are never chosen while count < number of drawn tokens. Exactly
  `count` tokens are chosen (ranks, not a threshold, so ties cannot change the number).
  """
  noise_BT = jax.random.gumbel(rng, log_prob_BT.shape, jnp.float32)
  confidence_BT = jnp.where(known_BT, jnp.inf, log_prob_BT + temperature * noise_BT)
  ranks_BT = jnp.argsort(jnp.argsort(confidence_BT, axis=-1), axis=-1)
  return ranks_BT < count_B[:, None]


class MaskGIT(Presets, nn.Module):
  """Masked token transformer: `logits` (training forward on masked input) and `sample`.

  A [K + 1, E] token table whose last row is the mask token, a class table with a null class
  for classifier-free guidance (condition dropout in training), learned positions (as the
  original) or RoPE (2D over (h, w), 1D for TiTok sequences; the class token's q and k are
  then zero, the GPT convention), pre-norm blocks, a final norm and a [E, K] head with bias.
  """

  PRESETS = {
      # The ImageNet 256 model of Chang et al. 2022, over its VQGAN's 16 x 16 grid of 1024 codes.
      "MaskGIT": dict(width=768, depth=24, num_heads=16, mlp_dim=3072, codebook_size=1024,
                      token_shape=(16, 16)),
  }

  codebook_size: int  # K; the mask id is K
  token_shape: tuple[int, ...] = (16, 16)  # the tokenizer's grid: (h, w) or (n,)
  num_classes: int = 1000  # 0: unconditional (only the null class token)
  width: int = 768  # E
  depth: int = 24
  num_heads: int = 16
  mlp_dim: int = 3072
  norm: NormKind = "layernorm"
  mlp_activation: MlpActivation = "gelu"
  positions: Literal["rope", "learned"] = "learned"  # rope: 2D for (h, w), 1D for (n,)
  rope_theta: float = 10_000.0
  norm_epsilon: float = 1e-6
  cond_dropout: float = 0.1  # probability of replacing the class by the null class (CFG)
  dropout: float = 0.1  # on the input embeddings and both residual branches
  dtype: jnp.dtype = jnp.float32  # compute dtype; params and the residual stream stay f32
  scan_layers: bool = True
  attention_implementation: Implementation = None

  @property
  def mask_id(self) -> int:
    return self.codebook_size

  @property
  def num_tokens(self) -> int:
    return math.prod(self.token_shape)

  @nn.compact
  def _forward(self, tokens_BT: jax.Array, labels_B: jax.Array, drop_B: jax.Array,
               train: bool) -> jax.Array:
    """Unchecked forward: ids [B, T] (mask id allowed) -> logits [B, T, K] f32."""
    check_token_shape(self.token_shape)
    num_tokens = self.num_tokens
    drop_B = condition_dropout(self, drop_B, drop_B.shape[0], self.cond_dropout, train)
    class_table = nn.Embed(
        self.num_classes + 1, self.width, name="class_embed",
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("classes", "embed")))
    token_table = nn.Embed(
        self.codebook_size + 1, self.width, name="token_embed",
        embedding_init=nn.with_logical_partitioning(_EMBED_INIT, ("vocab", "embed")))
    x_BTE = token_table(tokens_BT)
    rope, positions, zero_qk = None, None, None
    if self.positions == "learned":
      x_BTE = x_BTE + self.param(
          "pos_embed", nn.with_logical_partitioning(_EMBED_INIT, (None, "embed")),
          (num_tokens, self.width))[None]
    elif self.positions == "rope":
      rope = "2d" if len(self.token_shape) == 2 else "1d"
      index = jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.arange(num_tokens)])
      positions = token_positions(self.token_shape, index)
      zero_qk = jnp.arange(num_tokens + 1) < 1
    else:
      raise ValueError(f"positions must be 'rope' or 'learned'; got {self.positions!r}")
    cls_B1E = class_table(jnp.where(drop_B, self.num_classes, labels_B))[:, None]
    x_BSE = nn.Dropout(self.dropout)(jnp.concatenate([cls_B1E, x_BTE], axis=1),
                                     deterministic=not train)
    h_BSE = Transformer(
        num_layers=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim, norm=self.norm,
        norm_epsilon=self.norm_epsilon, mlp_activation=self.mlp_activation, causal=False,
        rope=rope, rope_theta=self.rope_theta, dropout_rate=self.dropout, dtype=self.dtype,
        attention_implementation=self.attention_implementation, scan_layers=self.scan_layers,
        name="transformer")(x_BSE, positions=positions, zero_qk=zero_qk,
                            deterministic=not train)
    head = nn.Dense(
        self.codebook_size, dtype=self.dtype, name="head",
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                 ("embed", "vocab")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)))
    return head(h_BSE[:, 1:]).astype(jnp.float32)

  def logits(self, tokens: jax.Array, labels: jax.Array | None = None, *, train: bool = False,
             drop_cond: jax.Array | None = None) -> jax.Array:
    """Masked tokens [B, *token_shape] (ids in [0, K], K = mask) -> [B, *token_shape, K] f32.

    labels: int [B] in [0, num_classes), or None for the null class. train=True enables
    dropout and condition dropout (rng stream "dropout"). drop_cond: optional bool [B], True
    to replace that sample's class by the null class.
    """
    sampling.check_token_grid(tokens, self.token_shape, self.codebook_size + 1)
    batch = tokens.shape[0]
    drop_B = (jnp.zeros((batch,), jnp.bool_) if drop_cond is None
              else jnp.asarray(drop_cond, jnp.bool_))
    if labels is None:
      labels_B, drop_B = jnp.zeros((batch,), jnp.int32), jnp.ones((batch,), jnp.bool_)
    else:
      sampling.check_labels(labels, self.num_classes)
      if np.shape(labels)[0] != batch:
        raise ValueError(f"labels must have one class id per sample, shape ({batch},); got "
                         f"{np.shape(labels)}")
      labels_B = labels
    logits_BTK = self._forward(tokens.reshape(batch, -1), labels_B, drop_B, train)
    return logits_BTK.reshape(batch, *self.token_shape, self.codebook_size)

  def __call__(self, tokens, labels=None, *, train=False, drop_cond=None):
    """Same as `logits`."""
    return self.logits(tokens, labels, train=train, drop_cond=drop_cond)

  def sample(self, params, rng, labels=None, *, num_samples: int | None = None,
             num_steps: int = 12, choice_temperature: float = 4.5, cfg_scale: float = 1.0,
             cfg_schedule: sampling.CfgSchedule = "constant", temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, return_history: bool = False):
    """Samples int32 ids [B, *token_shape] by iterative parallel decoding (one jitted scan).

    Starting from all-mask, each of the S steps:
      - draws every masked token (temperature / top-k / top-p, CFG on the logits);
      - keeps n_s = floor(N * cos(pi/2 * (s + 1) / S)) tokens masked after step s (0-based; N
        masked at the start), clipped to [1, still masked - 1]: each step fixes at least one
        token and keeps one for the next; the last step fixes all (`num_masked_after_step`);
      - re-masks the least confident drawn tokens, confidence = log p(drawn token) +
        choice_temperature * (1 - (s + 1) / S) * Gumbel noise, an annealed randomness that
        vanishes at the end (`remask_lowest_confidence`). Tokens fixed earlier never change.

    Call on the unbound module. params, rng, labels, num_samples, cfg_*, temperature, top_k,
    top_p: as GPT.sample (CFG guides every step's logits; "linear" ramps over the steps).
    num_steps: S decoding steps (<= T useful). choice_temperature: scale of the Gumbel noise
    on the re-masking confidence, annealed linearly to 0. return_history: also return the
    ids after every step, [S, B, *token_shape] with the mask id where still masked.
    """
    if int(num_steps) < 1:
      raise ValueError(f"num_steps must be a positive integer; got {num_steps}")
    if not (np.isfinite(choice_temperature) and choice_temperature >= 0):
      raise ValueError(f"choice_temperature must be >= 0; got {choice_temperature}")
    config = sampling.SamplingConfig(temperature, top_k, top_p, cfg_scale, cfg_schedule)
    batch = sampling.resolve_batch(labels, num_samples, self.num_classes, config)
    labels_B = (jnp.zeros((batch,), jnp.int32) if labels is None
                else jnp.asarray(labels, jnp.int32))
    drop_B = jnp.full((batch,), labels is None)
    if config.guidance:
      labels_B = jnp.concatenate([labels_B, labels_B])
      drop_B = jnp.concatenate([drop_B, jnp.ones_like(drop_B)])
    variables = params if "params" in params else {"params": params}
    tokens, history = _sample(self, config, int(num_steps), float(choice_temperature),
                              bool(return_history), variables, labels_B, drop_B,
                              sampling.as_key(rng))
    return (tokens, history) if return_history else tokens


@functools.partial(jax.jit, static_argnames=("model", "config", "num_steps",
                                             "choice_temperature", "return_history"))
def _sample(model: MaskGIT, config: sampling.SamplingConfig, num_steps: int,
            choice_temperature: float, return_history: bool, variables, labels_B, drop_B,
            rng):
  batch = labels_B.shape[0] // (2 if config.guidance else 1)
  num_tokens, mask_id = model.num_tokens, model.mask_id
  ids_BT = jnp.full((batch, num_tokens), mask_id, jnp.int32)

  def step_fn(ids_BT, step):
    inputs = jnp.concatenate([ids_BT, ids_BT]) if config.guidance else ids_BT
    logits = model.apply(variables, inputs, labels_B, drop_B, False, method=MaskGIT._forward)
    logits_BTK = sampling.guided_logits(logits, step, num_steps, config)
    rng_draw, rng_mask = jax.random.split(jax.random.fold_in(rng, step))
    unknown_BT = ids_BT == mask_id
    drawn_BT = jnp.where(unknown_BT, sampling.sample_logits(rng_draw, logits_BTK, config),
                         ids_BT)
    log_prob_BT = jnp.take_along_axis(jax.nn.log_softmax(logits_BTK, axis=-1),
                                      drawn_BT[..., None], axis=-1)[..., 0]
    count_B = num_masked_after_step(step, num_steps, num_tokens, unknown_BT.sum(-1))
    annealed = choice_temperature * (1.0 - (step + 1.0) / num_steps)
    remask_BT = remask_lowest_confidence(rng_mask, log_prob_BT, ~unknown_BT, count_B, annealed)
    ids_BT = jnp.where(remask_BT, mask_id, drawn_BT)
    return ids_BT, (ids_BT if return_history else None)

  ids_BT, history = jax.lax.scan(step_fn, ids_BT, jnp.arange(num_steps))
  tokens = ids_BT.reshape(batch, *model.token_shape)
  if return_history:
    history = history.reshape(num_steps, batch, *model.token_shape)
  return tokens, history
