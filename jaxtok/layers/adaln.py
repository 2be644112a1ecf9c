"""Blocks conditioned by adaptive LayerNorm (adaLN-zero, Peebles & Xie 2023, "Scalable
Diffusion Models with Transformers"): the condition sets each norm's shift and scale and
gates each residual branch; the modulation is zero-initialised, so a fresh block is the
identity.

Shape letters: B batch, S tokens, E width, N heads, H head width.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers.attention import (Implementation, KVCache, decode_mask,
                                     dot_product_attention)
from jaxtok.layers.transformer import Mlp, make_norm

_ZERO = nn.initializers.zeros_init()


def modulate(x, shift, scale):
  """adaLN: x (1 + scale) + shift."""
  return x * (1.0 + scale) + shift


# -- layers --------------------------------------------------------------------------------------

class AdaLNBlock(nn.Module):
  """A pre-norm block whose norms are modulated and whose branches are gated by the
  condition (DiT's adaLN-zero): LayerNorm (eps 1e-6), causal attention with biased q/k/v and
  LayerNorm on each head's q and k, a GELU MLP. Keeps the residual stream's dtype."""

  num_heads: int  # N
  mlp_dim: int
  norm_epsilon: float = 1e-6
  dropout_rate: float = 0.0  # on both residual branches
  dtype: jnp.dtype = jnp.float32
  attention_implementation: Implementation = None

  @nn.compact
  def __call__(self, x_BSE, c_BSE, deterministic: bool, cache: KVCache | None = None,
               cache_index=None):
    width = x_BSE.shape[-1]
    mod = nn.Dense(6 * width, dtype=self.dtype, name="modulation",
                   kernel_init=nn.with_logical_partitioning(_ZERO, ("embed", "mlp")),
                   bias_init=nn.with_logical_partitioning(_ZERO, ("mlp",)))(nn.silu(c_BSE))
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = jnp.split(
        mod.astype(jnp.float32), 6, axis=-1)
    drop = nn.Dropout(self.dropout_rate)
    h_BSE = modulate(make_norm("layernorm", self.norm_epsilon, "attn_norm")(x_BSE),
                     shift_a, scale_a)
    h_BSE, cache = self._attend(h_BSE, cache, cache_index)
    x_BSE = x_BSE + (gate_a * drop(h_BSE, deterministic=deterministic)).astype(x_BSE.dtype)
    h_BSE = modulate(make_norm("layernorm", self.norm_epsilon, "mlp_norm")(x_BSE),
                     shift_m, scale_m)
    h_BSE = Mlp(self.mlp_dim, "gelu", True, self.dtype, name="mlp")(h_BSE)
    x_BSE = x_BSE + (gate_m * drop(h_BSE, deterministic=deterministic)).astype(x_BSE.dtype)
    return x_BSE, cache

  def _attend(self, h_BSE, cache, cache_index):
    width = h_BSE.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads={self.num_heads}")
    heads = (self.num_heads, width // self.num_heads)

    def dense(name):
      return nn.DenseGeneral(
          heads, dtype=self.dtype, name=name,
          kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                   ("embed", "heads", "kv")),
          bias_init=nn.with_logical_partitioning(_ZERO, ("heads", "kv")))

    q_BSNH = make_norm("layernorm", self.norm_epsilon, "query_norm")(dense("query")(h_BSE))
    k_BSNH = make_norm("layernorm", self.norm_epsilon, "key_norm")(dense("key")(h_BSE))
    q_BSNH, k_BSNH = q_BSNH.astype(self.dtype), k_BSNH.astype(self.dtype)
    v_BSNH = dense("value")(h_BSE)
    if cache is None:
      out = dot_product_attention(q_BSNH, k_BSNH, v_BSNH, causal=True,
                                  implementation=self.attention_implementation)
    else:
      start = (0, cache_index, 0, 0)
      cache = KVCache(
          jax.lax.dynamic_update_slice(cache.k, k_BSNH.astype(cache.k.dtype), start),
          jax.lax.dynamic_update_slice(cache.v, v_BSNH.astype(cache.v.dtype), start))
      mask = decode_mask(cache_index, h_BSE.shape[1], cache.k.shape[1])[None, None]
      out = dot_product_attention(q_BSNH, cache.k.astype(q_BSNH.dtype),
                                  cache.v.astype(q_BSNH.dtype), mask=mask,
                                  implementation=self.attention_implementation)
    proj = nn.DenseGeneral(
        width, axis=(-2, -1), dtype=self.dtype, name="out",
        kernel_init=nn.with_logical_partitioning(nn.initializers.xavier_uniform(),
                                                 ("heads", "kv", "embed")),
        bias_init=nn.with_logical_partitioning(_ZERO, ("embed",)))
    return proj(out), cache
