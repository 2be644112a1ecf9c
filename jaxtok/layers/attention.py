"""Multi-head attention: one attention function for every model, and the Linen module.

Shape letters: B batch, T query tokens, S key/value tokens, N heads, H head dim, E width.

`dot_product_attention` is the single place attention is computed. `Attention.decode` is the
KV-cache path of causal models: new tokens' keys and values are written into a preallocated
`KVCache` at a running index and the queries attend to every cached position up to their own.

On GPU `dot_product_attention` asks cuDNN's fused (flash) kernel for bf16/fp16 inputs of a
shape cuDNN takes, and uses XLA otherwise (CPU, TPU, f32, unsupported head dims, or whenever
cuDNN refuses at trace time). Both paths keep the softmax statistics in f32.
`jax.nn.dot_product_attention(implementation=None)` never picks cuDNN by itself, hence the
explicit choice here.
"""

from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers import rope as rope_lib

Implementation = Literal["xla", "cudnn"] | None

_CUDNN_DTYPES = (jnp.bfloat16, jnp.float16)
# Errors cuDNN's trace-time checks raise for shapes/layouts it does not support.
_CUDNN_REFUSALS = (NotImplementedError, ValueError, RuntimeError)


def _gpu_compute_capability() -> tuple[int, int] | None:
  """(major, minor) of the default GPU, or None when the default backend is not a GPU."""
  if jax.default_backend() != "gpu":
    return None
  capability = getattr(jax.devices()[0], "compute_capability", None)
  if not capability:
    return None
  major, minor = (int(part) for part in str(capability).split(".")[:2])
  return major, minor


def cudnn_supports(q_BTNH, k_BSNH, v_BSNH, *, mask=None,
                   capability: tuple[int, int] | None = None) -> bool:
  """Whether cuDNN's fused attention takes these inputs (checked before asking it).

  Mirrors the conditions of jax's cuDNN wrapper for bf16/fp16: compute capability >= 8.0,
  head dim a multiple of 8 and <= 128 (<= 256 from Hopper, 9.0, on), q/k/v of one dtype and
  one head dim, and even T and S when a mask (passed to cuDNN as a bias) is given.
  `capability` defaults to the current default GPU's; None there means "not on a GPU".
  """
  capability = _gpu_compute_capability() if capability is None else capability
  if capability is None or capability < (8, 0):
    return False
  if not all(a.dtype == q_BTNH.dtype for a in (k_BSNH, v_BSNH)):
    return False
  if q_BTNH.dtype not in _CUDNN_DTYPES or q_BTNH.ndim != 4:
    return False
  head_dim = q_BTNH.shape[-1]
  if k_BSNH.shape[-1] != head_dim or v_BSNH.shape[-1] != head_dim:
    return False
  max_head_dim = 256 if capability >= (9, 0) else 128
  if head_dim % 8 or head_dim > max_head_dim:
    return False
  if mask is not None and (q_BTNH.shape[1] % 2 or k_BSNH.shape[1] % 2):
    return False
  return True


def dot_product_attention(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array, *,
                          causal: bool = False, mask: jax.Array | None = None,
                          implementation: Implementation = None) -> jax.Array:
  """softmax(q k^T / sqrt(H) [masked]) v, returned as [B, T, N, H] in q's dtype.

  Args:
    q_BTNH, k_BSNH, v_BSNH: queries, keys, values; k and v may have fewer heads than q
      (grouped-query attention) when N is a multiple of theirs.
    causal: query t attends to keys s <= t (aligned at position 0; meant for T == S).
    mask: optional boolean, True where a query may attend; broadcastable to [B, N, T, S].
    implementation: None picks cuDNN on GPU where supported and XLA otherwise; "xla" or
      "cudnn" forces one (a forced "cudnn" raises if cuDNN refuses the inputs).
  """
  if q_BTNH.ndim != 4 or k_BSNH.ndim != 4 or v_BSNH.ndim != 4:
    raise ValueError(
        "q, k, v must be [B, T, N, H], [B, S, N, H], [B, S, N, H]; got shapes "
        f"{q_BTNH.shape}, {k_BSNH.shape}, {v_BSNH.shape}")
  if implementation not in (None, "xla", "cudnn"):
    raise ValueError(f"implementation must be None, 'xla' or 'cudnn'; got {implementation!r}")
  if mask is not None:
    mask = jnp.asarray(mask, jnp.bool_)
  call = lambda impl: jax.nn.dot_product_attention(  # noqa: E731
      q_BTNH, k_BSNH, v_BSNH, mask=mask, is_causal=causal, implementation=impl)
  if implementation is not None:
    return call(implementation)
  if cudnn_supports(q_BTNH, k_BSNH, v_BSNH, mask=mask):
    try:
      return call("cudnn")
    except _CUDNN_REFUSALS:
      pass  # a case the pre-check missed (cuDNN version, layout): XLA computes it
  return call("xla")


class KVCache(NamedTuple):
  """Keys and values of the tokens decoded so far, preallocated to the maximum length S.

  Each is [B, S, N, H] for one layer, or [L, B, S, N, H] for a stack of L layers (the layout
  `Transformer` scans over). A pytree: carry it through loops and donate it to jit.
  """

  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, batch_size: int, max_length: int, num_heads: int, head_dim: int,
            dtype=jnp.float32, num_layers: int | None = None,
            heads_first: bool = False) -> "KVCache":
    """An empty cache; with num_layers, stacked as [L, B, S, N, H] for a layer stack.

    heads_first: [.., B, N, S, H] instead, the layout `Attention.decode(layer=...)` reads
    (and `Transformer` decodes with): attention's batch axes (B, N) lead, so its two matmuls
    read the cache where it lies instead of through a transposed copy.
    """
    shape = (batch_size, max_length, num_heads, head_dim)
    if heads_first:
      shape = (batch_size, num_heads, max_length, head_dim)
    if num_layers is not None:
      shape = (num_layers, *shape)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def _large_negative(dtype):
  return jnp.asarray(-0.7 * jnp.finfo(dtype).max, dtype)  # as jax.nn's XLA attention


def cached_attention(q_BTNH: jax.Array, k_BNSH: jax.Array, v_BNSH: jax.Array,
                     mask_TS: jax.Array) -> jax.Array:
  """Attention over a heads-first cache [B, N, S, H] -> [B, T, N, H] in q's dtype.

  The computation of jax.nn.dot_product_attention's XLA path (f32 logits and softmax,
  probabilities cast to the values' dtype), with the cache read in its own layout.
  """
  logits_BNTS = jnp.einsum("btnh,bnsh->bnts", q_BTNH, k_BNSH.astype(q_BTNH.dtype),
                           preferred_element_type=jnp.float32)
  logits_BNTS *= jnp.float32(q_BTNH.shape[-1] ** -0.5)
  logits_BNTS = jnp.where(mask_TS[None, None], logits_BNTS, _large_negative(jnp.float32))
  probs_BNTS = jax.nn.softmax(logits_BNTS, axis=-1).astype(q_BTNH.dtype)
  return jnp.einsum("bnts,bnsh->btnh", probs_BNTS, v_BNSH.astype(q_BTNH.dtype))


def decode_mask(index: jax.Array, num_queries: int, max_length: int) -> jax.Array:
  """Bool [T, S]: query t (at position index + t) sees cached positions s <= index + t."""
  query_pos_T1 = index + jnp.arange(num_queries)[:, None]
  return jnp.arange(max_length)[None, :] <= query_pos_T1


class Attention(nn.Module):
  """Multi-head self-attention with q/k/v/out projections and optional RoPE on q and k.

  Parameters carry logical axis names: q/k/v kernels ("embed", "heads", "kv"), the output
  kernel ("heads", "kv", "embed"). The call is split into `project_qkv` -> attention ->
  `project_out` (all submodules built in `setup`, so every method can reach them); `decode`
  puts a KV cache between the two projections.
  """

  num_heads: int  # N
  head_dim: int  # H
  features: int  # E, the output width (normally the input width)
  use_bias: bool = True  # biases on the four projections (ViT/CLIP style)
  causal: bool = False  # query t attends only to keys s <= t
  rope: Literal["1d", "2d"] | None = None  # rotary positions on q and k, or none
  rope_theta: float = 10_000.0
  dtype: jnp.dtype = jnp.float32  # compute dtype; params stay f32
  implementation: Implementation = None  # see dot_product_attention
  kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()

  def setup(self):
    def dense(features, axis, kernel_names, bias_names):
      return nn.DenseGeneral(
          features=features, axis=axis, use_bias=self.use_bias, dtype=self.dtype,
          kernel_init=nn.with_logical_partitioning(self.kernel_init, kernel_names),
          bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), bias_names))

    heads = (self.num_heads, self.head_dim)
    self.query = dense(heads, -1, ("embed", "heads", "kv"), ("heads", "kv"))
    self.key = dense(heads, -1, ("embed", "heads", "kv"), ("heads", "kv"))
    self.value = dense(heads, -1, ("embed", "heads", "kv"), ("heads", "kv"))
    self.out = dense(self.features, (-2, -1), ("heads", "kv", "embed"), ("embed",))

  def project_qkv(self, x_BTE: jax.Array, positions: jax.Array | None = None,
                  zero_qk: jax.Array | None = None):
    """x [B, T, E] -> q, k, v [B, T, N, H], with RoPE applied to q and k if configured.

    positions: [B, T] or [T] for 1D RoPE (default arange(T)); [B, T, 2] or [T, 2] (row,
    column) for 2D RoPE (required). Ignored when rope is None.
    zero_qk: optional bool [B, T] or [T]; True where q and k are set to zero. LlamaGen's
    condition tokens need it: its rotary table holds zeros (not the identity) there, so they
    are seen by every query with logit 0 and contribute only through their values.
    """
    q_BTNH, k_BTNH, v_BTNH = self.query(x_BTE), self.key(x_BTE), self.value(x_BTE)
    if self.rope is not None:
      if positions is None:
        if self.rope == "2d":
          raise ValueError("2D RoPE needs positions [B, T, 2] or [T, 2] of (row, column)")
        positions = jnp.arange(x_BTE.shape[1])
      apply = rope_lib.apply_rope_2d if self.rope == "2d" else rope_lib.apply_rope
      q_BTNH = apply(q_BTNH, positions, theta=self.rope_theta)
      k_BTNH = apply(k_BTNH, positions, theta=self.rope_theta)
    if zero_qk is not None:
      keep_BT11 = ~jnp.asarray(zero_qk, jnp.bool_)[..., None, None]
      q_BTNH = jnp.where(keep_BT11, q_BTNH, jnp.zeros((), q_BTNH.dtype))
      k_BTNH = jnp.where(keep_BT11, k_BTNH, jnp.zeros((), k_BTNH.dtype))
    return q_BTNH, k_BTNH, v_BTNH

  def project_out(self, out_BTNH: jax.Array) -> jax.Array:
    """Attention output [B, T, N, H] -> [B, T, E]."""
    return self.out(out_BTNH)

  def __call__(self, x_BTE: jax.Array, *, positions: jax.Array | None = None,
               mask: jax.Array | None = None, zero_qk: jax.Array | None = None) -> jax.Array:
    """Self-attention of x [B, T, E] -> [B, T, features]; mask: bool, broadcastable to
    [B, N, T, T], True where a query may attend; zero_qk: see project_qkv."""
    q_BTNH, k_BTNH, v_BTNH = self.project_qkv(x_BTE, positions, zero_qk)
    out_BTNH = dot_product_attention(
        q_BTNH, k_BTNH, v_BTNH, causal=self.causal, mask=mask,
        implementation=self.implementation)
    return self.project_out(out_BTNH)

  def decode(self, x_BTE: jax.Array, cache: KVCache, index: jax.Array, *,
             positions: jax.Array | None = None, zero_qk: jax.Array | None = None,
             layer: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Causal attention of T new tokens at positions index .. index+T-1 over a KV cache.

    Writes the new keys and values into `cache` ([B, S, N, H] each) at `index` (a scalar,
    the number of tokens already cached, the same for the whole batch) and lets query t
    attend to cached positions <= index + t; positions later than that (not yet written)
    are masked. T = 1 is one decoding step; T > 1 fills a prompt ("prefill"). Equals the
    causal `__call__` on the whole sequence. 1D RoPE positions default to index + arange(T).
    With `layer` (a scalar), `cache` is a whole stack's, heads first: [L, B, N, S, H]
    (`KVCache.zeros(..., num_layers=L, heads_first=True)`). Only this layer's new rows are
    written, in place, and attention reads the layer's slice in its own layout: a layer stack
    passes one buffer through its layers instead of copying every layer's cache in and out
    (a decoding step is bound by reading the cache; copies multiply its memory traffic).
    Returns the output [B, T, features] and the updated cache.
    """
    num_queries = x_BTE.shape[1]
    max_length = cache.k.shape[1] if layer is None else cache.k.shape[-2]
    if self.rope == "1d" and positions is None:
      positions = index + jnp.arange(num_queries)
    q_BTNH, k_BTNH, v_BTNH = self.project_qkv(x_BTE, positions, zero_qk)
    mask_TS = decode_mask(index, num_queries, max_length)
    if layer is None:
      start = (0, index, 0, 0)
      cache = KVCache(
          jax.lax.dynamic_update_slice(cache.k, k_BTNH.astype(cache.k.dtype), start),
          jax.lax.dynamic_update_slice(cache.v, v_BTNH.astype(cache.v.dtype), start))
      out_BTNH = dot_product_attention(
          q_BTNH, cache.k.astype(q_BTNH.dtype), cache.v.astype(q_BTNH.dtype),
          mask=mask_TS[None, None], implementation=self.implementation)
      return self.project_out(out_BTNH), cache
    start = (layer, 0, 0, index, 0)
    rows = lambda a: jnp.swapaxes(a, 1, 2)[None].astype(cache.k.dtype)  # noqa: E731  [1,B,N,T,H]
    cache = KVCache(jax.lax.dynamic_update_slice(cache.k, rows(k_BTNH), start),
                    jax.lax.dynamic_update_slice(cache.v, rows(v_BTNH), start))
    layer_k, layer_v = (jax.lax.dynamic_index_in_dim(a, layer, 0, keepdims=False)
                        for a in cache)
    out_BTNH = cached_attention(q_BTNH, layer_k, layer_v, mask_TS)
    return self.project_out(out_BTNH), cache
