"""Pre-norm transformer block and stack (Vaswani et al. 2017; pre-norm as in GPT-2 / ViT).

Shape letters: B batch, T tokens, E width, M MLP hidden width.

Precision: parameters are f32; matmuls run in `dtype` (bf16 on accelerators when configured);
norms and the attention softmax run in f32. The residual stream keeps the dtype of the input
(pass f32 embeddings for an f32 residual stream, the tokenizers' choice).

Logical axis names on parameters: "embed", "mlp", "heads", "kv", "norm", and "layers" for the
stacked layer axis of a scanned stack.

KV-cache decoding (causal stacks): pass `cache` (a `KVCache` stacked heads first
[L, B, N, S, H], from `KVCache.zeros(..., num_layers=L, heads_first=True)`) and
`cache_index` (how many tokens it holds) and the call returns (x, updated cache) instead of
x; see `Attention.decode`.
"""

import dataclasses
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers.attention import Attention, Implementation, KVCache

NormKind = Literal["layernorm", "rmsnorm"]
MlpActivation = Literal["gelu", "gelu_tanh", "swiglu"]

_INIT = nn.initializers.xavier_uniform()


def make_norm(kind: NormKind, epsilon: float, name: str | None = None) -> nn.Module:
  """A LayerNorm or RMSNorm computing (and returning) f32, with logical axis "norm"."""
  scale_init = nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",))
  if kind == "layernorm":
    bias_init = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",))
    return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, scale_init=scale_init,
                        bias_init=bias_init, name=name)
  if kind == "rmsnorm":
    return nn.RMSNorm(epsilon=epsilon, dtype=jnp.float32, scale_init=scale_init, name=name)
  raise ValueError(f"norm must be 'layernorm' or 'rmsnorm'; got {kind!r}")


class Mlp(nn.Module):
  """Two-layer MLP: GELU (erf, as PyTorch's nn.GELU), tanh-approximated GELU, or SwiGLU."""

  hidden_dim: int  # M
  activation: MlpActivation = "gelu"
  use_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTE: jax.Array) -> jax.Array:
    def dense(features, kernel_names, name):
      return nn.Dense(
          features, use_bias=self.use_bias, dtype=self.dtype, name=name,
          kernel_init=nn.with_logical_partitioning(_INIT, kernel_names),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                 kernel_names[-1:]))

    if self.activation == "swiglu":  # Shazeer 2020: silu(x W_gate) * (x W_up)
      gate_BTM = dense(self.hidden_dim, ("embed", "mlp"), "wi_gate")(x_BTE)
      h_BTM = nn.silu(gate_BTM) * dense(self.hidden_dim, ("embed", "mlp"), "wi_up")(x_BTE)
    elif self.activation in ("gelu", "gelu_tanh"):
      h_BTM = dense(self.hidden_dim, ("embed", "mlp"), "wi")(x_BTE)
      h_BTM = nn.gelu(h_BTM, approximate=self.activation == "gelu_tanh")
    else:
      raise ValueError(
          f"activation must be 'gelu', 'gelu_tanh' or 'swiglu'; got {self.activation!r}")
    return dense(x_BTE.shape[-1], ("mlp", "embed"), "wo")(h_BTM)


class TransformerBlock(nn.Module):
  """x + Attn(Norm(x)), then x + Mlp(Norm(x)); optional dropout on both residual branches."""

  num_heads: int  # N
  mlp_dim: int  # M
  head_dim: int | None = None  # None for E // N
  norm: NormKind = "layernorm"
  norm_epsilon: float = 1e-6
  mlp_activation: MlpActivation = "gelu"
  use_bias: bool = True  # on attention and MLP projections
  causal: bool = False
  rope: Literal["1d", "2d"] | None = None  # None: positions are added by the caller
  rope_theta: float = 10_000.0
  dropout_rate: float = 0.0  # residual dropout (attention-weight dropout is not offered)
  dtype: jnp.dtype = jnp.float32  # compute dtype
  attention_implementation: Implementation = None

  @nn.compact
  def __call__(self, x_BTE: jax.Array, positions: jax.Array | None = None,
               mask: jax.Array | None = None, deterministic: bool = True,
               zero_qk: jax.Array | None = None, cache: KVCache | None = None,
               cache_index: jax.Array | None = None, cache_layer: jax.Array | None = None):
    """x [B, T, E] -> [B, T, E]; with `cache` ([B, S, N, H]) -> (x, updated cache).

    zero_qk: see Attention.project_qkv. With a cache, `mask` must be None (the cache's
    causal mask is used) and `cache_index` is the number of tokens already in it;
    cache_layer: this block's layer in a stacked [L, B, N, S, H] cache (Attention.decode).
    """
    width = x_BTE.shape[-1]
    if self.head_dim is None and width % self.num_heads:
      raise ValueError(
          f"width {width} is not divisible by num_heads={self.num_heads}; set head_dim")
    head_dim = self.head_dim or width // self.num_heads

    h_BTE = make_norm(self.norm, self.norm_epsilon, name="attn_norm")(x_BTE)
    attn = Attention(
        num_heads=self.num_heads, head_dim=head_dim, features=width, use_bias=self.use_bias,
        causal=self.causal, rope=self.rope, rope_theta=self.rope_theta, dtype=self.dtype,
        implementation=self.attention_implementation, name="attn")
    if cache is None:
      h_BTE = attn(h_BTE, positions=positions, mask=mask, zero_qk=zero_qk)
    else:
      if mask is not None or cache_index is None:
        raise ValueError("decoding with a cache needs cache_index and takes no mask")
      h_BTE, cache = attn.decode(h_BTE, cache, cache_index, positions=positions,
                                 zero_qk=zero_qk, layer=cache_layer)
    h_BTE = nn.Dropout(self.dropout_rate)(h_BTE, deterministic=deterministic)
    x_BTE = x_BTE + h_BTE.astype(x_BTE.dtype)

    h_BTE = make_norm(self.norm, self.norm_epsilon, name="mlp_norm")(x_BTE)
    h_BTE = Mlp(self.mlp_dim, self.mlp_activation, self.use_bias, self.dtype, name="mlp")(h_BTE)
    h_BTE = nn.Dropout(self.dropout_rate)(h_BTE, deterministic=deterministic)
    x_BTE = x_BTE + h_BTE.astype(x_BTE.dtype)
    return x_BTE if cache is None else (x_BTE, cache)


class _ScannedBlock(TransformerBlock):
  """The block as an `nn.scan` body: (carry, *broadcast args) -> (carry, None)."""

  def __call__(self, x_BTE, positions, mask, deterministic,  # pylint: disable=arguments-differ
               zero_qk):
    return super().__call__(x_BTE, positions, mask, deterministic, zero_qk), None


class _ScannedDecodeBlock(TransformerBlock):
  """The decoding block as an `nn.scan` body. The whole stacked cache is carried with the
  layer index and each layer writes its new rows in place: as a scanned input and output
  instead, every step would copy the whole cache into a new stacked buffer."""

  def __call__(self, carry, positions, zero_qk,  # pylint: disable=arguments-differ
               cache_index):
    x_BTE, cache, layer = carry
    x_BTE, cache = super().__call__(x_BTE, positions, None, True, zero_qk, cache, cache_index,
                                    layer)
    return (x_BTE, cache, layer + 1), None


_BLOCK_FIELDS = tuple(
    f.name for f in dataclasses.fields(TransformerBlock) if f.name not in ("parent", "name"))


class Transformer(nn.Module):
  """A stack of `num_layers` pre-norm blocks, then an optional final norm.

  With scan_layers=True (default) the blocks run under `nn.scan`: one block is traced and
  compiled whatever the depth (compile time stays flat from 2 to 24 layers), and
  parameters are stacked with a leading [num_layers] axis named "layers". scan_layers=False
  unrolls a Python loop with per-layer parameter trees (layer_0, layer_1, ...), handy for
  checkpoint conversion or per-layer inspection. Fields below the first three are the
  block's (see TransformerBlock).
  """

  num_layers: int
  num_heads: int
  mlp_dim: int
  head_dim: int | None = None
  norm: NormKind = "layernorm"
  norm_epsilon: float = 1e-6
  mlp_activation: MlpActivation = "gelu"
  use_bias: bool = True
  causal: bool = False
  rope: Literal["1d", "2d"] | None = None
  rope_theta: float = 10_000.0
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  attention_implementation: Implementation = None
  final_norm: bool = True  # a norm after the last block (pre-norm stacks need one somewhere)
  scan_layers: bool = True
  # Layers per iteration of the scanned loop (True: the whole stack, no loop). Same
  # parameters and numerics; tools/bench/roofline.py unrolls because XLA's cost analysis
  # counts a loop body once.
  scan_unroll: int | bool = 1

  @nn.compact
  def __call__(self, x_BTE: jax.Array, *, positions: jax.Array | None = None,
               mask: jax.Array | None = None, deterministic: bool = True,
               zero_qk: jax.Array | None = None, cache: KVCache | None = None,
               cache_index: jax.Array | None = None):
    """x [B, T, E] -> [B, T, E] (f32 after the final norm, else x's dtype).

    positions: for RoPE, see Attention.project_qkv. mask: bool, broadcastable to
    [B, N, T, T], True where a query may attend. deterministic: False enables dropout
    (rng stream "dropout"). zero_qk: bool [B, T] or [T], True where q and k are zeroed
    (see Attention.project_qkv).

    Decoding: with `cache` (stacked [L, B, N, S, H]: `KVCache.zeros(..., num_layers=L,
    heads_first=True)`) and
    `cache_index` (tokens already cached), x holds the T new tokens and the call returns
    (x, new cache).
    """
    block_kwargs = {name: getattr(self, name) for name in _BLOCK_FIELDS}
    if cache is not None:
      x_BTE, cache = self._decode(x_BTE, cache, cache_index, positions, zero_qk, block_kwargs)
    elif self.scan_layers:
      stack = nn.scan(
          _ScannedBlock, variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast,) * 4, length=self.num_layers, unroll=self.scan_unroll,
          metadata_params={nn.PARTITION_NAME: "layers"})
      x_BTE, _ = stack(**block_kwargs, name="layers")(
          x_BTE, positions, mask, deterministic, zero_qk)
    else:
      for i in range(self.num_layers):
        x_BTE = TransformerBlock(**block_kwargs, name=f"layer_{i}")(
            x_BTE, positions, mask, deterministic, zero_qk)
    if self.final_norm:
      x_BTE = make_norm(self.norm, self.norm_epsilon, name="final_norm")(x_BTE)
    return x_BTE if cache is None else (x_BTE, cache)

  def _decode(self, x_BTE, cache, cache_index, positions, zero_qk, block_kwargs):
    """The layers in decoding mode, with the same parameter names as the plain call."""
    if cache_index is None:
      raise ValueError("decoding with a cache needs cache_index (tokens already cached)")
    if cache.k.shape[0] != self.num_layers:
      raise ValueError(
          f"cache must be stacked over num_layers={self.num_layers} layers "
          f"([L, B, N, S, H]); got cache.k.shape={cache.k.shape}")
    if self.scan_layers:
      stack = nn.scan(
          _ScannedDecodeBlock, variable_axes={"params": 0}, split_rngs={"params": True},
          in_axes=(nn.broadcast,) * 3, length=self.num_layers, unroll=self.scan_unroll,
          metadata_params={nn.PARTITION_NAME: "layers"})
      (x_BTE, cache, _), _ = stack(**block_kwargs, name="layers")(
          (x_BTE, cache, jnp.zeros((), jnp.int32)), positions, zero_qk, cache_index)
      return x_BTE, cache
    for i in range(self.num_layers):
      x_BTE, cache = TransformerBlock(**block_kwargs, name=f"layer_{i}")(
          x_BTE, positions, None, True, zero_qk, cache, cache_index, i)
    return x_BTE, cache
