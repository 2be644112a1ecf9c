"""Pallas Mosaic GPU nearest code (Hopper and newer): fused distance + running argmin.

The Triton lowering of Pallas is deprecated since JAX 0.11; this is the same algorithm for
Mosaic GPU, written with `plgpu.kernel` (present in JAX 0.11 and 0.12). The grid is
(row blocks, codebook chunks); one warpgroup per program holds a [64, block_k] score tile in
registers in the WGMMA layout. Mosaic GPU lowers no dot_general outside `wgmma`, and wgmma
would round f32 inputs to TF32 (the scoring rule wants true f32 dots), so the dot is D
broadcast multiply-adds of a row of x^T (rows of the tile) by a row of the codebook^T
(columns): the kernel is meant for VQ codebooks (D = 4..64), where the dot is cheap and the
argmin dominates. Mosaic GPU has min reductions but no argmin, so each tile takes its row
minimum, then the lowest column reaching it (a min over a float iota, exact below 2^24
codes), and a strict `<` merges it into the running (best, index) pair: ties go to the
lowest index, as `jnp.argmin`. Partial results per chunk are merged by blocks.merge_splits.

x^T and the codebook^T are read straight from global memory (the codebook stays in L2);
the per-row results go through shared memory to global memory.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jaxtok.kernels.nearest_code import blocks as blocks_lib
from jaxtok.kernels.nearest_code import reference

BLOCK_N = 64  # rows of one WGMMA-layout tile, held by one warpgroup
_MAX_CODES = 2**24  # column indices are tracked in f32, exact below this
_UNROLL_D = 64  # up to this D, x's columns stay in registers and the D loop is unrolled


def choose(n: int, k: int) -> blocks_lib.BlockSizes:
  """Block sizes: 64 rows (the WGMMA layout's), 64 codes per tile, and the codebook split
  across programs when the row blocks alone cannot fill the GPU (as blocks.choose)."""
  bk = 64
  row_blocks, tiles = -(-n // BLOCK_N), -(-k // bk)
  splits = 1
  while row_blocks * splits < 512 and tiles // (2 * splits) >= 8:
    splits *= 2
  return blocks_lib.BlockSizes(block_n=BLOCK_N, block_k=bk, k_splits=splits)


def _kernel(xT_ref, eT_ref, bias_ref, weight_ref, best_ref, idx_ref, best_smem, idx_smem, *,
            d: int, block_k: int, tiles_per_split: int):
  rows = pl.ds(jax.lax.axis_index("rows") * BLOCK_N, BLOCK_N)
  split = jax.lax.axis_index("splits")
  tile_layout = plgpu.Layout.WGMMA
  row_layout, col_layout = tile_layout.reduce(1), tile_layout.reduce(0)
  shape = (BLOCK_N, block_k)
  cols = plgpu.broadcasted_iota(jnp.int32, shape, 1, layout=tile_layout).astype(jnp.float32)

  def x_col(j):  # column j of the row block, [64] in the row layout
    return plgpu.load(xT_ref.at[j, rows], layout=row_layout, optimized=False).astype(
        jnp.float32)

  def col_vector(ref, codes):
    v = plgpu.load(ref.at[codes], layout=col_layout, optimized=False).astype(jnp.float32)
    return jax.lax.broadcast_in_dim(v, shape, [1])

  def outer(x_j, e_ref, codes):
    return jax.lax.broadcast_in_dim(x_j, shape, [0]) * col_vector(e_ref, codes)

  x_cols = [x_col(j) for j in range(d)] if d <= _UNROLL_D else None  # loaded once

  def tile(t, carry):
    best, best_idx = carry
    k0 = (split * tiles_per_split + t) * block_k
    codes = pl.ds(k0, block_k)
    if x_cols is not None:  # small D: a static loop of broadcast multiply-adds
      dots = jnp.zeros(shape, jnp.float32)
      for j in range(d):
        dots += outer(x_cols[j], eT_ref.at[j], codes)
    else:  # large D (not what this kernel is for): reload x's columns every tile
      dots = jax.lax.fori_loop(0, d, lambda j, acc: acc + outer(x_col(j), eT_ref.at[j], codes),
                               plgpu.layout_cast(jnp.zeros(shape, jnp.float32), tile_layout))
    s = col_vector(bias_ref, codes) + col_vector(weight_ref, codes) * dots
    s = jnp.where(s != s, jnp.inf, s)  # a NaN score never wins
    m = s.min(axis=1)
    j = jnp.where(s == jax.lax.broadcast_in_dim(m, shape, [0]), cols,
                  float(block_k)).min(axis=1)
    better = m < best  # strict: an earlier tile keeps a tie
    return (jnp.where(better, m, best),
            jnp.where(better, k0.astype(jnp.float32) + j, best_idx))

  init = (plgpu.layout_cast(jnp.full((BLOCK_N,), jnp.inf, jnp.float32), row_layout),
          plgpu.layout_cast(jnp.zeros((BLOCK_N,), jnp.float32), row_layout))
  best, best_idx = jax.lax.fori_loop(0, tiles_per_split, tile, init)
  best_smem[...] = best
  idx_smem[...] = best_idx.astype(jnp.int32)
  plgpu.commit_smem()
  plgpu.copy_smem_to_gmem(best_smem, best_ref.at[split, rows])
  plgpu.copy_smem_to_gmem(idx_smem, idx_ref.at[split, rows])
  plgpu.wait_smem_to_gmem(0)


def nearest_code_mosaic_gpu(x_ND: jax.Array, codebook_KD: jax.Array, *, metric: str,
                            blocks: blocks_lib.BlockSizes | None = None,
                            interpret: bool = False):
  """(indices [N] int32, dist [N] f32) of the nearest code; see reference.py for the rule.

  blocks: block_n must be 64, block_k a multiple of 8 (default: `choose`). interpret: run in
  the Pallas interpreter (any backend; for tests). Without it a GPU backend is required.
  """
  if interpret and not hasattr(plgpu, "InterpretGPUParams"):
    raise RuntimeError(f"interpreting a Mosaic GPU kernel needs jax >= 0.12 "
                       f"(plgpu.InterpretGPUParams); this is jax {jax.__version__}")
  if not interpret and jax.default_backend() != "gpu":
    raise RuntimeError(
        f"impl='mosaic_gpu' compiles a Mosaic GPU kernel and needs a GPU backend; the default "
        f"backend is {jax.default_backend()!r}. Use impl='auto' or 'xla' here (interpret=True "
        f"runs the kernel in the slow Pallas interpreter, for tests).")
  (n, d), k = x_ND.shape, codebook_KD.shape[0]
  blocks = blocks or choose(n, k)
  if blocks.block_n != BLOCK_N or blocks.block_k % 8:
    raise ValueError(f"mosaic_gpu needs block_n == {BLOCK_N} and block_k a multiple of 8; "
                     f"got block_n={blocks.block_n}, block_k={blocks.block_k}")
  splits = blocks.k_splits
  tiles_per_split = -(-k // (blocks.block_k * splits))
  n_pad = blocks_lib.round_up(n, BLOCK_N)
  k_pad = splits * tiles_per_split * blocks.block_k
  if k_pad > _MAX_CODES:
    raise ValueError(f"mosaic_gpu tracks code indices in f32: codebook must hold at most "
                     f"{_MAX_CODES} codes (padded); got {k_pad}")
  bias, weight = reference.code_terms(codebook_KD, metric)
  plan = blocks_lib.Plan(n_pad=n_pad, k_pad=k_pad, d_pad=d, tiles_per_split=tiles_per_split)
  x, e, bias, weight = blocks_lib.pad_operands(x_ND, codebook_KD, bias, weight, plan)
  kernel = functools.partial(_kernel, d=d, block_k=blocks.block_k,
                             tiles_per_split=tiles_per_split)
  call = plgpu.kernel(
      kernel,
      out_type=(jax.ShapeDtypeStruct((splits, n_pad), jnp.float32),
                jax.ShapeDtypeStruct((splits, n_pad), jnp.int32)),
      scratch_types=(plgpu.SMEM((BLOCK_N,), jnp.float32), plgpu.SMEM((BLOCK_N,), jnp.int32)),
      grid=(n_pad // BLOCK_N, splits), grid_names=("rows", "splits"),
      interpret=plgpu.InterpretGPUParams() if interpret else None)
  best, idx = call(x.T, e.T, bias, weight)
  best, idx = blocks_lib.merge_splits(best, idx)
  return idx[:n], reference.finish_dist(best[:n], x_ND, metric)
