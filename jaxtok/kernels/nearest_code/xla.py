"""Tiled XLA nearest code: a scan over codebook tiles carrying a running (min, index).

The same algorithm as the Pallas kernels, expressed with XLA ops: temporary memory is
O(N · block_k) instead of the O(N · K) of the materializing reference.
"""

import jax
import jax.numpy as jnp

from jaxtok.kernels.nearest_code import reference

# Bytes one [N, block_k] f32 score tile may take; XLA keeps about two such buffers alive.
_TILE_BYTES = 64 * 2**20
_MIN_BLOCK_K, _MAX_BLOCK_K = 128, 4096


def default_block_k(n: int, k: int) -> int:
  """The whole codebook when its scores fit the tile budget, else a multiple of 128."""
  fit = _TILE_BYTES // (4 * max(n, 1))
  if k <= max(fit, _MIN_BLOCK_K):
    return k
  return max(_MIN_BLOCK_K, min(_MAX_BLOCK_K, fit // _MIN_BLOCK_K * _MIN_BLOCK_K))


def nearest_code_xla(x_ND: jax.Array, codebook_KD: jax.Array, *, metric: str,
                     block_k: int | None = None):
  n, k = x_ND.shape[0], codebook_KD.shape[0]
  block_k = block_k or default_block_k(n, k)
  bias, weight = reference.code_terms(codebook_KD, metric)
  tiles = -(-k // block_k)
  pad = tiles * block_k - k
  if pad:  # padded codes score +inf and can never win
    codebook_KD = jnp.pad(codebook_KD, ((0, pad), (0, 0)))
    bias = jnp.pad(bias, (0, pad), constant_values=jnp.inf)
    weight = jnp.pad(weight, (0, pad))

  def tile_min(t, e_BD, b_B, w_B):
    s_NB = reference.scores(x_ND, e_BD, b_B, w_B)
    j = jnp.argmin(s_NB, axis=-1)  # lowest index within the tile on ties
    m = jnp.take_along_axis(s_NB, j[:, None], axis=-1)[:, 0]
    return m, t * block_k + j.astype(jnp.int32)

  def step(carry, tile):
    best, best_idx = carry
    m, j = tile_min(*tile)
    better = m < best  # strict: an earlier tile keeps a tie
    return (jnp.where(better, m, best), jnp.where(better, j, best_idx)), None

  xs = (jnp.arange(tiles, dtype=jnp.int32), codebook_KD.reshape(tiles, block_k, -1),
        bias.reshape(tiles, block_k), weight.reshape(tiles, block_k))
  # The first tile seeds the carry: it then has the same type (shard_map's varying axes
  # included) as the step's output, which a constant initial carry would not.
  best, idx = tile_min(*(a[0] for a in xs))
  if tiles > 1:
    (best, idx), _ = jax.lax.scan(step, (best, idx), tuple(a[1:] for a in xs))
  return idx, reference.finish_dist(best, x_ND, metric)
