"""Pallas (Triton) nearest code for GPUs: fused distance + running argmin, no N×K buffer.

The grid is (row blocks, codebook chunks). Each program loads its block_n rows of x once, then
a fori_loop walks its chunk of the codebook block_k codes at a time: one f32-accumulated dot
per tile (D in block_d chunks when D is large), the affine scoring rule of reference.py, the
tile's first minimum, and a strict `<` merge into the running (min, index) held in registers.
Tiles are visited in index order, so ties go to the lowest index exactly like `jnp.argmin`.
Each program writes one partial (score, index) per row; blocks.merge_splits folds the chunks,
and reference.finish_dist turns the winning score into the distance (same NaN policy as XLA).
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxtok.kernels.nearest_code import blocks as blocks_lib
from jaxtok.kernels.nearest_code import reference


def _kernel(x_ref, e_ref, bias_ref, weight_ref, best_ref, idx_ref, *, block_k, block_d,
            tiles_per_split, precision):
  block_n, d_pad = x_ref.shape
  chunk_start = pl.program_id(1) * (tiles_per_split * block_k)
  nt = (((1,), (1,)), ((), ()))  # x[n, :] · e[k, :]
  x = x_ref[...] if block_d == d_pad else None  # whole rows fit: load them once

  def tile_dots(k0):
    codes = pl.ds(k0, block_k)
    if x is not None:
      return jax.lax.dot_general(x, e_ref[codes, :], nt, precision=precision,
                                 preferred_element_type=jnp.float32)

    def feature_chunk(c, acc):
      feats = pl.ds(pl.multiple_of(c * block_d, block_d), block_d)
      return acc + jax.lax.dot_general(x_ref[:, feats], e_ref[codes, feats], nt,
                                       precision=precision, preferred_element_type=jnp.float32)

    return jax.lax.fori_loop(0, d_pad // block_d, feature_chunk,
                             jnp.zeros((block_n, block_k), jnp.float32))

  def tile(t, carry):
    best, best_idx = carry
    k0 = pl.multiple_of(chunk_start + t * block_k, block_k)
    codes = pl.ds(k0, block_k)
    s = reference.affine_scores(tile_dots(k0), bias_ref[codes][None, :],
                                weight_ref[codes][None, :])
    m, j = reference.first_min(s)
    better = m < best  # strict: an earlier tile keeps a tie
    return jnp.where(better, m, best), jnp.where(better, k0 + j, best_idx)

  init = (jnp.full((block_n,), jnp.inf, jnp.float32), jnp.zeros((block_n,), jnp.int32))
  best, best_idx = jax.lax.fori_loop(0, tiles_per_split, tile, init)
  best_ref[...] = best
  idx_ref[...] = best_idx


def nearest_code_pallas_gpu(x_ND: jax.Array, codebook_KD: jax.Array, *, metric: str,
                            blocks: blocks_lib.BlockSizes | None = None,
                            interpret: bool = False):
  """(indices [N] int32, dist [N] f32) of the nearest code; see reference.py for the rule.

  blocks: tile sizes (default: blocks.choose for this shape). interpret: run the kernel in the
  Pallas interpreter (any backend, slow; for tests). Without it a GPU backend is required.
  """
  if not interpret and jax.default_backend() != "gpu":
    raise RuntimeError(
        f"impl='pallas_gpu' compiles a Triton kernel and needs a GPU backend; the default "
        f"backend is {jax.default_backend()!r}. Use impl='auto' or 'xla' here (interpret=True "
        f"runs the kernel in the slow Pallas interpreter, for tests).")
  (n, d), k = x_ND.shape, codebook_KD.shape[0]
  blocks = blocks or blocks_lib.choose(n, k, d, x_ND.dtype, "gpu")
  blocks.check("gpu", x_ND.dtype)
  p = blocks_lib.plan(n, k, d, blocks, "gpu")
  bias, weight = reference.code_terms(codebook_KD, metric)
  x, e, bias, weight = blocks_lib.pad_operands(x_ND, codebook_KD, bias, weight, p)
  bn, splits = blocks.block_n, blocks.k_splits
  kernel = functools.partial(
      _kernel, block_k=blocks.block_k, block_d=min(blocks.block_d or p.d_pad, p.d_pad),
      tiles_per_split=p.tiles_per_split, precision=reference.dot_precision(x.dtype))
  partial_out = pl.BlockSpec((None, bn), lambda i, s: (s, i))
  best, idx = pl.pallas_call(
      kernel,
      out_shape=(jax.ShapeDtypeStruct((splits, p.n_pad), jnp.float32),
                 jax.ShapeDtypeStruct((splits, p.n_pad), jnp.int32)),
      grid=(p.n_pad // bn, splits),
      in_specs=[
          pl.BlockSpec((bn, p.d_pad), lambda i, s: (i, 0)),
          # The whole (padded) codebook and its terms: the kernel slices its own tiles.
          pl.BlockSpec((p.k_pad, p.d_pad), lambda i, s: (0, 0)),
          pl.BlockSpec((p.k_pad,), lambda i, s: (0,)),
          pl.BlockSpec((p.k_pad,), lambda i, s: (0,)),
      ],
      out_specs=(partial_out, partial_out),
      compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps,
                                           num_stages=blocks.num_stages),
      interpret=interpret,
      name="nearest_code",
  )(x, e, bias, weight)
  best, idx = blocks_lib.merge_splits(best, idx)
  return idx[:n], reference.finish_dist(best[:n], x_ND, metric)
