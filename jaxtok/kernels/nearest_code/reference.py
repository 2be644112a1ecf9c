"""The scoring rule every nearest-code implementation shares, and the materializing reference.

Every metric is one affine rule on the f32-accumulated dot product, score[n, k] = bias[k] +
weight[k]·<x[n], e[k]>, index[n] = argmin_k score[n, k], so a kernel needs only per-code f32
terms and a matmul (the table is in `code_terms`). NaN policy, in every implementation: a NaN
score never wins; a row of x holding a NaN gets index 0 (gathers stay in bounds) and dist NaN,
which surfaces in any loss computed from it. Ties go to the lowest index, as `jnp.argmin`.
"""

import jax
import jax.numpy as jnp

METRICS = ("l2", "cosine", "dot")
_EPS = 1e-12  # guards 1/‖e‖ and 1/‖x‖ for all-zero vectors (their cosine is then 0)


def dot_precision(dtype) -> jax.lax.Precision:
  """f32 inputs get true f32 matmuls (TPU/GPU default to bf16/TF32 passes); bf16 needs none."""
  return jax.lax.Precision.HIGHEST if dtype == jnp.float32 else jax.lax.Precision.DEFAULT


def code_terms(codebook_KD: jax.Array, metric: str) -> tuple[jax.Array, jax.Array]:
  """Per-code f32 (bias[K], weight[K]) of the scoring rule, and the dist `finish_dist` returns:

  | metric | bias[k]  | weight[k]  | dist[n] returned                       |
  |--------|----------|------------|----------------------------------------|
  | l2     | ‖e_k‖²   | -2         | max(‖x_n‖² + score, 0) = ‖x_n − e_k‖²  |
  | cosine | 0        | -1/‖e_k‖   | 1 + score/‖x_n‖ = 1 − cos(x_n, e_k)    |
  | dot    | 0        | -1         | score = −<x_n, e_k>                    |

  Computed in f32 from exactly the values fed to the dot (after any bf16 cast), so a bf16
  codebook is scored as the bf16 values it holds.
  """
  e = codebook_KD.astype(jnp.float32)
  sq_norm = jnp.sum(e * e, axis=-1)
  if metric == "l2":
    return sq_norm, jnp.full_like(sq_norm, -2.0)
  if metric == "cosine":
    return jnp.zeros_like(sq_norm), -jax.lax.rsqrt(jnp.maximum(sq_norm, _EPS))
  if metric == "dot":
    return jnp.zeros_like(sq_norm), -jnp.ones_like(sq_norm)
  raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")


def finish_dist(best_score_N: jax.Array, x_ND: jax.Array, metric: str) -> jax.Array:
  """Turns the winning score into the distance of `code_terms`' table (f32), NaN rows → NaN."""
  x = x_ND.astype(jnp.float32)
  sq_norm = jnp.sum(x * x, axis=-1)  # NaN exactly for rows holding a NaN
  if metric == "l2":
    dist = jnp.maximum(sq_norm + best_score_N, 0.0)
  elif metric == "cosine":
    dist = 1.0 + best_score_N * jax.lax.rsqrt(jnp.maximum(sq_norm, _EPS))
  else:
    dist = best_score_N
  return jnp.where(jnp.isnan(sq_norm), jnp.nan, dist)


def code_dots(x_ND: jax.Array, codebook_KD: jax.Array) -> jax.Array:
  """f32-accumulated <x[n], e[k]> [N, K'], at the precision the scoring rule asks for."""
  return jax.lax.dot_general(
      x_ND, codebook_KD, (((1,), (1,)), ((), ())),
      precision=dot_precision(x_ND.dtype), preferred_element_type=jnp.float32)


def affine_scores(dots_NK: jax.Array, bias_1K: jax.Array, weight_1K: jax.Array) -> jax.Array:
  """bias + weight · dots with NaN mapped to +inf (a NaN never wins); terms as [1, K'] rows."""
  s = bias_1K + weight_1K * dots_NK
  return jnp.where(jnp.isnan(s), jnp.inf, s)


def scores(x_ND: jax.Array, codebook_KD: jax.Array, bias_K, weight_K) -> jax.Array:
  """f32 scores [N, K'] for one block of codes, NaN mapped to +inf (a NaN never wins)."""
  return affine_scores(code_dots(x_ND, codebook_KD), bias_K[None, :], weight_K[None, :])


def first_min(s_NK: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Row minimum [N] and the lowest column reaching it [N] int32: `jnp.argmin`'s tie rule.

  Written as two plain min reductions (no argmin primitive), which both the Triton and the
  Mosaic TPU lowerings support; kernels use it on one score tile at a time.
  """
  m = jnp.min(s_NK, axis=1)
  cols = jax.lax.broadcasted_iota(jnp.int32, s_NK.shape, 1)
  j = jnp.min(jnp.where(s_NK == m[:, None], cols, s_NK.shape[1]), axis=1)
  return m, j


def nearest_code_reference(x_ND: jax.Array, codebook_KD: jax.Array, *, metric: str):
  """Materializes the whole [N, K] score matrix, then argmin: the baseline to beat."""
  bias, weight = code_terms(codebook_KD, metric)
  s = scores(x_ND, codebook_KD, bias, weight)
  idx = jnp.argmin(s, axis=-1).astype(jnp.int32)
  best = jnp.take_along_axis(s, idx[:, None], axis=-1)[:, 0]
  return idx, finish_dist(best, x_ND, metric)
