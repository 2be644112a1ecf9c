"""VAR's transformer blocks (Tian et al. 2024): AdaLN self-attention conditioned on the class.

Layout of FoundationVision/VAR `models/basic_var.py` (AdaLNSelfAttn, AdaLNBeforeHead) with
shared_aln=False, so its weights map one to one (see jaxtok/convert/var.py):
  (γ1, γ2, s1, s2, b1, b2) = ada_lin(silu(cond))            six [B, 1, E] modulations
  x ← x + drop_path(γ1 · attn(LN(x)·(1 + s1) + b1))
  x ← x + drop_path(γ2 · ffn(LN(x)·(1 + s2) + b2))
LayerNorm without affine parameters (eps 1e-6); attention: one bias-free qkv projection plus
q and v biases (k has none); with attn_l2_norm (VAR's released models) q and k are
l2-normalised and q scaled by a learned per-head factor exp(min(scale_mul, log 100)) with no
1/√H; without, the scale is 0.25/√H. FFN: tanh-GELU, hidden width round(mlp_ratio·E).

Shape letters: B batch, T tokens of this call, S cached tokens, N heads, H head dim, E width.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers.attention import KVCache, dot_product_attention

_INIT = nn.initializers.truncated_normal(0.02)
_MAX_SCALE_MUL = math.log(100.0)


def _dense(features, names, name, dtype, use_bias=True, init=_INIT):
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, name=name,
                  kernel_init=nn.with_logical_partitioning(init, names),
                  bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                         names[-1:]))


def layer_norm(x: jax.Array, eps: float) -> jax.Array:
  """LayerNorm over the last axis without scale or bias, in f32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def drop_path(x_BTE: jax.Array, rate, key: jax.Array) -> jax.Array:
  """Stochastic depth: each sample's branch kept with probability 1 − rate, scaled by it."""
  keep = 1.0 - rate
  mask = jax.random.bernoulli(key, keep, (x_BTE.shape[0], 1, 1))
  return jnp.where(mask, x_BTE / jnp.maximum(keep, 1e-6), 0.0).astype(x_BTE.dtype)


class AdaLNBlock(nn.Module):
  """One VAR block; see the module docstring. Decoding writes the new keys and values into a
  stacked cache [L, B, S, N, H] at layer `layer`, and the T new tokens attend to every cached
  position before index + T (a whole scale at a time: it sees itself and earlier scales)."""

  num_heads: int
  mlp_ratio: float = 4.0
  norm_epsilon: float = 1e-6
  attn_l2_norm: bool = True
  dtype: jnp.dtype = jnp.float32
  attention_implementation: str | None = None

  def _qkv(self, h_BTE: jax.Array):
    width = h_BTE.shape[-1]
    heads, head_dim = self.num_heads, width // self.num_heads
    qkv = _dense(3 * width, ("embed", "mlp"), "mat_qkv", self.dtype, use_bias=False)(h_BTE)
    zeros = nn.with_logical_partitioning(nn.initializers.zeros_init(), ("mlp",))
    q_bias, v_bias = self.param("q_bias", zeros, (width,)), self.param("v_bias", zeros, (width,))
    split = lambda a: a.reshape(*a.shape[:2], heads, head_dim)  # noqa: E731
    q = split(qkv[..., :width] + q_bias.astype(qkv.dtype)[None, None])
    k = split(qkv[..., width:2 * width])
    v = split(qkv[..., 2 * width:] + v_bias.astype(qkv.dtype)[None, None])
    # dot_product_attention divides by √H: fold VAR's own scale into q instead.
    if self.attn_l2_norm:
      scale_mul = self.param(
          "scale_mul", nn.with_logical_partitioning(
              nn.initializers.constant(math.log(4.0)), ("heads",)), (heads,))
      factor = jnp.exp(jnp.minimum(scale_mul, _MAX_SCALE_MUL)) * math.sqrt(head_dim)
      normalize = lambda a: a.astype(jnp.float32) * jax.lax.rsqrt(  # noqa: E731
          jnp.maximum(jnp.sum(jnp.square(a.astype(jnp.float32)), -1, keepdims=True), 1e-24))
      q = (normalize(q) * factor[None, None, :, None]).astype(self.dtype)
      k = normalize(k).astype(self.dtype)
    else:
      q = q * jnp.asarray(0.25, q.dtype)
    return q, k, v

  def _attend(self, h_BTE, mask, cache, cache_index, layer):
    q, k, v = self._qkv(h_BTE)
    if cache is not None:
      start = (layer, 0, cache_index, 0, 0)
      cache = KVCache(
          jax.lax.dynamic_update_slice(cache.k, k[None].astype(cache.k.dtype), start),
          jax.lax.dynamic_update_slice(cache.v, v[None].astype(cache.v.dtype), start))
      k = jax.lax.dynamic_index_in_dim(cache.k, layer, keepdims=False).astype(q.dtype)
      v = jax.lax.dynamic_index_in_dim(cache.v, layer, keepdims=False).astype(q.dtype)
      mask = (jnp.arange(k.shape[1]) < cache_index + h_BTE.shape[1])[None, None, None]
    out = dot_product_attention(q, k, v, mask=mask, implementation=self.attention_implementation)
    out = out.reshape(*out.shape[:2], -1)
    return _dense(h_BTE.shape[-1], ("mlp", "embed"), "proj", self.dtype)(out), cache

  @nn.compact
  def __call__(self, x_BTE, cond_BE, mask=None, drop_rate=0.0, deterministic=True,
               cache: KVCache | None = None, cache_index=None, layer=None):
    """x [B, T, E] (f32 residual stream) -> x; with a cache, (x, updated cache)."""
    width = x_BTE.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} must be divisible by num_heads={self.num_heads}")
    mods = _dense(6 * width, ("embed", "mlp"), "ada_lin", self.dtype)(nn.silu(cond_BE))
    gamma1, gamma2, scale1, scale2, shift1, shift2 = jnp.split(
        mods.astype(jnp.float32)[:, None, :], 6, axis=-1)

    def branch(h_BTE, gamma, n):
      h_BTE = h_BTE.astype(jnp.float32) * gamma
      if deterministic:
        return h_BTE
      return drop_path(h_BTE, drop_rate, jax.random.fold_in(self.make_rng("dropout"), n))

    h = layer_norm(x_BTE, self.norm_epsilon) * (1.0 + scale1) + shift1
    h, cache = self._attend(h.astype(self.dtype), mask, cache, cache_index, layer)
    x_BTE = x_BTE + branch(h, gamma1, 0)
    h = layer_norm(x_BTE, self.norm_epsilon) * (1.0 + scale2) + shift2
    hidden = round(width * self.mlp_ratio)
    h = _dense(hidden, ("embed", "mlp"), "fc1", self.dtype)(h.astype(self.dtype))
    h = _dense(width, ("mlp", "embed"), "fc2", self.dtype)(nn.gelu(h, approximate=True))
    x_BTE = x_BTE + branch(h, gamma2, 1)
    return x_BTE if cache is None else (x_BTE, cache)


class ScannedBlock(AdaLNBlock):
  """The block as an `nn.scan` body over layers: carry (x, cache, layer); the per-layer
  drop-path rate is the scanned input."""

  def __call__(self, carry, drop_rate, cond_BE, mask, deterministic,  # pylint: disable=W0221
               cache_index):
    x_BTE, cache, layer = carry
    out = super().__call__(x_BTE, cond_BE, mask, drop_rate, deterministic, cache, cache_index,
                           layer)
    x_BTE, cache = (out, None) if cache is None else out
    return (x_BTE, cache, layer + 1), None


class AdaLNHead(nn.Module):
  """VAR's AdaLNBeforeHead then the output head: LN(x)·(1 + s) + b, (s, b) = ada_lin(silu(c)),
  then a Dense to K logits (f32)."""

  codebook_size: int
  norm_epsilon: float = 1e-6
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTE: jax.Array, cond_BE: jax.Array) -> jax.Array:
    width = x_BTE.shape[-1]
    mods = _dense(2 * width, ("embed", "mlp"), "ada_lin", self.dtype)(nn.silu(cond_BE))
    scale, shift = jnp.split(mods.astype(jnp.float32)[:, None, :], 2, axis=-1)
    h = layer_norm(x_BTE, self.norm_epsilon) * (1.0 + scale) + shift
    head = _dense(self.codebook_size, ("embed", "vocab"), "head", self.dtype)
    return head(h.astype(self.dtype)).astype(jnp.float32)
