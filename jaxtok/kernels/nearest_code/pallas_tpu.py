"""Pallas (Mosaic TPU) nearest code: fused distance + running argmin, no N×K buffer.

Grid (codebook chunks, row blocks, code tiles). The last, sequential axis is the loop over code
tiles because Pallas double-buffers the HBM→VMEM copies of the blocks the grid walks: each
codebook tile loads behind the previous tile's compute (a fori_loop inside one step would only
re-slice VMEM, and 2^18 codes do not fit VMEM). The running (min, index) lives in the output
blocks, written back once per row block and lane-broadcast to [S, N, 128], the layout Mosaic
stores natively; chunks are "parallel" grid work, merged by blocks.merge_splits.
"""

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxtok.kernels.nearest_code import blocks as blocks_lib
from jaxtok.kernels.nearest_code import reference

_LANES = 128


def _kernel(x_ref, e_ref, bias_ref, weight_ref, best_ref, idx_ref, *, tiles_per_split,
            precision):
  t = pl.program_id(2)
  block_k = e_ref.shape[0]

  @pl.when(t == 0)
  def _init():
    best_ref[...] = jnp.full(best_ref.shape, jnp.inf, jnp.float32)
    idx_ref[...] = jnp.zeros(idx_ref.shape, jnp.int32)

  dots = jax.lax.dot_general(x_ref[...], e_ref[...], (((1,), (1,)), ((), ())),
                             precision=precision, preferred_element_type=jnp.float32)
  s = reference.affine_scores(dots, bias_ref[...], weight_ref[...])
  m, j = reference.first_min(s)
  k0 = (pl.program_id(0) * tiles_per_split + t) * block_k
  best = best_ref[...]
  better = m[:, None] < best  # strict: an earlier tile keeps a tie
  best_ref[...] = jnp.where(better, m[:, None], best)
  idx_ref[...] = jnp.where(better, k0 + j[:, None], idx_ref[...])


def _interpret_params(interpret):
  if interpret is True:
    return pltpu.InterpretParams()
  return interpret or False


def nearest_code_pallas_tpu(x_ND: jax.Array, codebook_KD: jax.Array, *, metric: str,
                            blocks: blocks_lib.BlockSizes | None = None,
                            interpret: bool | pltpu.InterpretParams = False):
  """(indices [N] int32, dist [N] f32) of the nearest code; see reference.py for the rule.

  blocks: tile sizes (default: blocks.choose for this shape). interpret: True or a
  `pltpu.InterpretParams` runs the kernel in the TPU-faithful Pallas interpreter (any backend,
  slow; for tests). Without it a TPU backend is required.
  """
  if not interpret and jax.default_backend() != "tpu":
    raise RuntimeError(
        f"impl='pallas_tpu' compiles a Mosaic TPU kernel and needs a TPU backend; the default "
        f"backend is {jax.default_backend()!r}. Use impl='auto' or 'xla' here (interpret=True "
        f"runs the kernel in the slow Pallas TPU interpreter, for tests).")
  (n, d), k = x_ND.shape, codebook_KD.shape[0]
  blocks = blocks or blocks_lib.choose(n, k, d, x_ND.dtype, "tpu")
  blocks.check("tpu", x_ND.dtype)
  p = blocks_lib.plan(n, k, d, blocks, "tpu")
  bias, weight = reference.code_terms(codebook_KD, metric)
  x, e, bias, weight = blocks_lib.pad_operands(x_ND, codebook_KD, bias, weight, p)
  bn, bk, splits, tps = blocks.block_n, blocks.block_k, blocks.k_splits, p.tiles_per_split
  code_term = pl.BlockSpec((1, bk), lambda s, i, t: (0, s * tps + t))
  partial_out = pl.BlockSpec((None, bn, _LANES), lambda s, i, t: (s, i, 0))
  best, idx = pl.pallas_call(
      functools.partial(_kernel, tiles_per_split=tps,
                        precision=reference.dot_precision(x.dtype)),
      out_shape=(jax.ShapeDtypeStruct((splits, p.n_pad, _LANES), jnp.float32),
                 jax.ShapeDtypeStruct((splits, p.n_pad, _LANES), jnp.int32)),
      grid=(splits, p.n_pad // bn, tps),
      in_specs=[
          pl.BlockSpec((bn, p.d_pad), lambda s, i, t: (i, 0)),
          pl.BlockSpec((bk, p.d_pad), lambda s, i, t: (s * tps + t, 0)),
          code_term,
          code_term,
      ],
      out_specs=(partial_out, partial_out),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=_interpret_params(interpret),
      name="nearest_code",
  )(x, e, bias[None, :], weight[None, :])
  best, idx = blocks_lib.merge_splits(best[..., 0], idx[..., 0])
  return idx[:n], reference.finish_dist(best[:n], x_ND, metric)
