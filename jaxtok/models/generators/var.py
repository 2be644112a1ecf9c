"""VAR: next-scale prediction (Tian et al. 2024, "Visual Autoregressive Modeling: Scalable
Image Generation via Next-Scale Prediction").

The tokens are the K token maps of `quantizers.MultiScaleVQ` (1×1, 2×2, ..., 16×16: L = 680),
predicted a whole scale at a time. The transformer reads, per scale k, one token per position
of map k: for k = 0 the class embedding (start of sequence) plus `pos_start`; for k ≥ 1 the
word embedding of f̂ of the scales before k area-downsampled to map k's size (the quantizer's
`next_scale_inputs` / `add_scale`), plus a level embedding and a learned position per token.
Attention is block-causal: a scale sees every earlier scale and itself. Blocks and head are
AdaLN-conditioned on the class embedding (var_blocks.py). The layout is FoundationVision/VAR's
`models/var.py`, so released weights map one to one (jaxtok/convert/var.py).

The quantizer (codebook and Phi convs) belongs to the tokenizer, not to this model: VAR's
parameter counts exclude it, and sampling takes it with its variables.

Shape letters: B batch, L tokens of all scales, T tokens of one scale, E width, K codebook
size, D the quantizer's code dim (VAR's Cvae), S scales.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.layers.attention import Implementation, KVCache
from jaxtok.layers.embed import condition_dropout
from jaxtok.models.generators import sampling
from jaxtok.models.generators.var_blocks import AdaLNHead, ScannedBlock
from jaxtok.models.presets import Presets
from jaxtok.quantizers.multiscale import VAR_PATCH_NUMS, scale_bounds


def scale_levels(patch_nums) -> np.ndarray:
  """The scale index of every token of the flat sequence [L]."""
  return np.concatenate([np.full((p * p,), k, np.int32) for k, p in enumerate(patch_nums)])


def block_causal_mask(patch_nums) -> np.ndarray:
  """Bool [L, L]: token i may attend to token j when j's scale is not after i's."""
  levels = scale_levels(patch_nums)
  return levels[:, None] >= levels[None, :]


def var_cfg_scale(scale: int, num_scales: int, cfg_scale: float, schedule: str) -> float:
  """Guidance at scale k: "linear" is VAR's ramp 1 + (cfg_scale − 1)·k/(S − 1), from none at
  the 1×1 map to cfg_scale at the last (VAR's `cfg=c` is cfg_scale = 1 + c); "constant"
  keeps cfg_scale."""
  if schedule == "constant" or num_scales == 1:
    return cfg_scale
  return 1.0 + (cfg_scale - 1.0) * scale / (num_scales - 1)


class VAR(Presets, nn.Module):
  """Class-conditional next-scale prediction transformer; see the module docstring.

  `logits(inputs, labels)` is the teacher-forced training forward on all scales at once,
  `sample(...)` the jitted scale-by-scale sampler with a KV cache. Parameter names follow
  VAR's: word_embed, class_emb, pos_start, pos_1LC, lvl_embed, blocks (stacked [depth, ...]),
  head (AdaLN head_nm and head).
  """

  # VAR's released sizes: width 64·depth, heads = depth, drop path 0.1·depth/24. Parameters
  # (with 4096 codes, Cvae 32, 1000 classes; as VAR's code counts them): d16 310,283,520,
  # d20 600,917,136, d24 1,033,399,360, d30 2,010,020,356.
  PRESETS = {
      "VAR-d16": dict(depth=16, width=1024, num_heads=16, drop_path_rate=0.1 * 16 / 24),
      "VAR-d20": dict(depth=20, width=1280, num_heads=20, drop_path_rate=0.1 * 20 / 24),
      "VAR-d24": dict(depth=24, width=1536, num_heads=24, drop_path_rate=0.1 * 24 / 24),
      "VAR-d30": dict(depth=30, width=1920, num_heads=30, drop_path_rate=0.1 * 30 / 24),
  }

  codebook_size: int = 4096  # K
  latent_dim: int = 32  # D, the quantizer's code dim (VAR's Cvae)
  patch_nums: tuple[int, ...] = VAR_PATCH_NUMS  # the quantizer's scales
  num_classes: int = 1000  # the class table has one more row, the null class
  width: int = 1024  # E
  depth: int = 16
  num_heads: int = 16
  mlp_ratio: float = 4.0
  norm_epsilon: float = 1e-6
  attn_l2_norm: bool = True  # VAR's released models: l2-normalised q, k with learned scales
  cond_dropout: float = 0.1  # probability of the null class in training (CFG)
  drop_path_rate: float = 0.0  # stochastic depth, rising linearly to this at the last block
  dtype: jnp.dtype = jnp.float32  # compute dtype; params and the residual stream stay f32
  attention_implementation: Implementation = None

  # `jaxtok.inference.sample_images` passes the tokenizer's quantizer and its variables.
  SAMPLES_WITH_QUANTIZER = True

  def example_inputs(self, batch: int) -> jax.Array:
    """Zero teacher-forcing inputs [batch, L − pn_0², D], e.g. for `init`."""
    return jnp.zeros((batch, self.num_tokens - self.patch_nums[0] ** 2, self.latent_dim))

  @property
  def num_tokens(self) -> int:
    """L, the tokens of all scales."""
    return sum(p * p for p in self.patch_nums)

  @property
  def token_shape(self) -> tuple[int]:
    """(L,): a sample is the flat ids of all scales (MultiScaleVQ.encode)."""
    return (self.num_tokens,)

  def setup(self):
    init_std = math.sqrt(1 / self.width / 3)  # VAR's init for embeddings and positions
    embed_init = lambda names: nn.with_logical_partitioning(  # noqa: E731
        nn.initializers.truncated_normal(init_std), names)
    first = self.patch_nums[0] ** 2
    self.word_embed = nn.Dense(
        self.width, dtype=jnp.float32,
        kernel_init=nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02),
                                                 (None, "embed")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))
    self.class_emb = nn.Embed(self.num_classes + 1, self.width,
                              embedding_init=embed_init(("classes", "embed")))
    self.pos_start = self.param("pos_start", embed_init((None, "embed")), (first, self.width))
    self.pos_1LC = self.param("pos_1LC", embed_init((None, "embed")),
                              (self.num_tokens, self.width))
    self.lvl_embed = nn.Embed(len(self.patch_nums), self.width,
                              embedding_init=embed_init((None, "embed")))
    self.blocks = nn.scan(
        ScannedBlock, variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
        length=self.depth, metadata_params={nn.PARTITION_NAME: "layers"})(
            num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, norm_epsilon=self.norm_epsilon,
            attn_l2_norm=self.attn_l2_norm, dtype=self.dtype,
            attention_implementation=self.attention_implementation)
    self.head = AdaLNHead(self.codebook_size, self.norm_epsilon, self.dtype)

  # -- pieces ---------------------------------------------------------------------------------

  def _position(self, begin: int, end: int) -> jax.Array:
    """Level plus position embeddings of tokens begin .. end − 1 [T, E]."""
    levels = jnp.asarray(scale_levels(self.patch_nums)[begin:end])
    return self.lvl_embed(levels) + self.pos_1LC[begin:end]

  def _cond(self, labels_B, drop_B) -> jax.Array:
    return self.class_emb(jnp.where(drop_B, self.num_classes, labels_B))

  def _run_blocks(self, x_BTE, cond_BE, *, mask=None, deterministic=True, cache=None,
                  cache_index=None):
    rates = jnp.linspace(0.0, self.drop_path_rate, self.depth)
    x_BTE = x_BTE.astype(jnp.float32)  # the residual stream stays f32 (even with bf16 params)
    (x_BTE, cache, _), _ = self.blocks((x_BTE, cache, jnp.zeros((), jnp.int32)), rates,
                                       cond_BE, mask, deterministic, cache_index)
    return x_BTE, cache

  def _drop_mask(self, batch, drop_cond, train):
    return condition_dropout(self, drop_cond, batch, self.cond_dropout, train)

  # -- training forward -----------------------------------------------------------------------

  def logits(self, inputs: jax.Array, labels: jax.Array | None = None, *, train: bool = False,
             drop_cond: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, L, K] (f32) of every scale's tokens at once.

    inputs: [B, L − pn_0², D], the quantizer's `next_scale_inputs(ids)` of the target ids.
    labels: int [B] class ids, or None for the null class. train=True enables condition
    dropout and stochastic depth (rng stream "dropout"); drop_cond: optional bool [B], True
    to use the null class for that sample.
    """
    first = self.patch_nums[0] ** 2
    expected = (self.num_tokens - first, self.latent_dim)
    if inputs.ndim != 3 or tuple(inputs.shape[1:]) != expected:
      raise ValueError(f"inputs must be [B, {expected[0]}, {expected[1]}] (the quantizer's "
                       f"next_scale_inputs); got shape {tuple(inputs.shape)}")
    batch = inputs.shape[0]
    if labels is not None:
      sampling.check_labels(labels, self.num_classes)
    labels_B = jnp.full((batch,), self.num_classes, jnp.int32) if labels is None else labels
    cond_BE = self._cond(labels_B, self._drop_mask(batch, drop_cond, train))
    sos_BTE = jnp.broadcast_to(cond_BE[:, None] + self.pos_start[None], (batch, first,
                                                                         self.width))
    x_BLE = jnp.concatenate([sos_BTE, self.word_embed(inputs.astype(jnp.float32))], axis=1)
    x_BLE = x_BLE + self._position(0, self.num_tokens)[None]
    mask = jnp.asarray(block_causal_mask(self.patch_nums))[None, None]
    h_BLE, _ = self._run_blocks(x_BLE, cond_BE, mask=mask, deterministic=not train)
    return self.head(h_BLE, cond_BE)

  def __call__(self, inputs, labels=None, *, train=False, drop_cond=None):
    """Same as `logits`."""
    return self.logits(inputs, labels, train=train, drop_cond=drop_cond)

  # -- decoding -------------------------------------------------------------------------------

  def init_cache(self, batch_size: int, dtype=None) -> KVCache:
    """An empty KV cache [depth, B, L, N, H]."""
    return KVCache.zeros(batch_size, self.num_tokens, self.num_heads,
                         self.width // self.num_heads, dtype or self.dtype,
                         num_layers=self.depth)

  def decode_scale(self, scale: int, inputs_BTD: jax.Array | None, labels_B: jax.Array,
                   drop_B: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feeds scale `scale` (a Python int): its inputs [B, pn², D] (None for scale 0, which
    reads the class embedding) -> its logits [B, pn², K] (f32) and the updated cache."""
    begin, end = scale_bounds(self.patch_nums)[scale]
    cond_BE = self._cond(labels_B, drop_B)
    if scale == 0:
      x_BTE = cond_BE[:, None] + self.pos_start[None]
    else:
      x_BTE = self.word_embed(inputs_BTD.astype(jnp.float32))
    x_BTE = x_BTE + self._position(begin, end)[None]
    h_BTE, cache = self._run_blocks(x_BTE, cond_BE, cache=cache,
                                    cache_index=jnp.asarray(begin, jnp.int32))
    return self.head(h_BTE, cond_BE), cache

  def sample(self, params, rng, labels=None, *, quantizer: nn.Module | None = None,
             quantizer_variables=None, num_samples: int | None = None, cfg_scale: float = 1.0,
             cfg_schedule: sampling.CfgSchedule = "linear", temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Samples flat int32 ids [B, L] scale by scale, in one jitted program with a KV cache.

    Call on the unbound module. quantizer / quantizer_variables: the tokenizer's
    MultiScaleVQ and its variables (they turn each scale's ids into the next scale's
    inputs). rng: a key or an int seed (scale k draws with fold_in(rng, k)). cfg_scale != 1
    runs the null class alongside; cfg_schedule "linear" is VAR's ramp (`var_cfg_scale`).
    temperature (0: greedy), top_k, top_p: see sampling.SamplingConfig.
    """
    if quantizer is None or quantizer_variables is None:
      raise ValueError("VAR.sample needs quantizer= and quantizer_variables= (the tokenizer's "
                       "MultiScaleVQ and its variables: jaxtok.inference.sample_options gives "
                       "them for a loaded pair)")
    if tuple(getattr(quantizer, "patch_nums", ())) != tuple(self.patch_nums):
      raise ValueError(f"quantizer must be a MultiScaleVQ with the model's patch_nums "
                       f"{self.patch_nums}; got {type(quantizer).__name__} "
                       f"{getattr(quantizer, 'patch_nums', '')}")
    config = sampling.SamplingConfig(temperature, top_k, top_p, cfg_scale, cfg_schedule)
    batch = sampling.resolve_batch(labels, num_samples, self.num_classes, config)
    labels_B = (jnp.full((batch,), self.num_classes, jnp.int32) if labels is None
                else jnp.asarray(labels, jnp.int32))
    drop_B = jnp.zeros((batch,), jnp.bool_)
    if config.guidance:  # conditional rows first, then the same rows with the null class
      labels_B = jnp.concatenate([labels_B, labels_B])
      drop_B = jnp.concatenate([drop_B, jnp.ones_like(drop_B)])
    variables = params if "params" in params else {"params": params}
    cache = self.init_cache(labels_B.shape[0])
    ids, _ = _sample(self, quantizer, config, variables, quantizer_variables, cache, labels_B,
                     drop_B, sampling.as_key(rng))
    return ids


@functools.partial(jax.jit, static_argnames=("model", "quantizer", "config"),
                   donate_argnames=("cache",))
def _sample(model: VAR, quantizer: nn.Module, config: sampling.SamplingConfig, variables,
            quantizer_variables, cache: KVCache, labels_B, drop_B, rng):
  """The scales unrolled (each has its own token count); returns (ids [B, L], cache)."""
  num_scales = len(model.patch_nums)
  batch = labels_B.shape[0] // (2 if config.guidance else 1)
  side = model.patch_nums[-1]
  f_hat = jnp.zeros((batch, side, side, model.latent_dim), jnp.float32)
  inputs, drawn = None, []
  for k, pn in enumerate(model.patch_nums):
    logits, cache = model.apply(variables, k, inputs, labels_B, drop_B, cache,
                                method=VAR.decode_scale)
    if config.guidance:
      cond, uncond = jnp.split(logits, 2, axis=0)
      logits = sampling.cfg_logits(cond, uncond, var_cfg_scale(
          k, num_scales, config.cfg_scale, config.cfg_schedule))
    ids = sampling.sample_logits(jax.random.fold_in(rng, k), logits, config)
    drawn.append(ids)
    f_hat, inputs = quantizer.apply(quantizer_variables, k, f_hat, ids.reshape(batch, pn, pn),
                                    method="add_scale")
    if inputs is not None and config.guidance:
      inputs = jnp.concatenate([inputs, inputs])
  return jnp.concatenate(drawn, axis=1), cache
