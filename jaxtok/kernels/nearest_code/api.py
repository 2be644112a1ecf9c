"""Public entry point: `nearest_code(x, codebook, *, metric, impl)`."""

import math

import jax
import jax.numpy as jnp

from jaxtok.kernels.nearest_code import measured
from jaxtok.kernels.nearest_code.mosaic_gpu import nearest_code_mosaic_gpu
from jaxtok.kernels.nearest_code.pallas_gpu import nearest_code_pallas_gpu
from jaxtok.kernels.nearest_code.pallas_tpu import nearest_code_pallas_tpu
from jaxtok.kernels.nearest_code.reference import METRICS, nearest_code_reference
from jaxtok.kernels.nearest_code.xla import nearest_code_xla

# name -> fn(x_ND, codebook_KD, *, metric) -> (indices [N], dist [N]). Tests swap the Pallas
# entries for interpret-mode partials (functools.partial(..., interpret=True)) to run on CPU.
_IMPLEMENTATIONS = {
    "xla": nearest_code_xla,
    "reference": nearest_code_reference,
    "pallas_gpu": nearest_code_pallas_gpu,
    "mosaic_gpu": nearest_code_mosaic_gpu,
    "pallas_tpu": nearest_code_pallas_tpu,
}
IMPLS = ("auto", *_IMPLEMENTATIONS)


def _resolve(impl: str, d: int) -> str:
  if impl == "auto":  # the measured winner (measured.py); backends without one: xla
    winners = measured.WINNERS.get(jax.default_backend(), {})
    return winners.get(measured.shape_class(d), "xla")
  if impl not in _IMPLEMENTATIONS:
    raise ValueError(f"impl must be one of {IMPLS}; got {impl!r}")
  return impl


def nearest_code(x: jax.Array, codebook: jax.Array, *, metric: str = "l2",
                 impl: str = "auto") -> tuple[jax.Array, jax.Array]:
  """Index of, and distance to, the nearest codebook row for every vector of x.

  Args:
    x: [..., D] float (f32 or bf16).
    codebook: [K, D] float. Mixed dtypes are promoted to a common one before scoring.
    metric: "l2" (squared Euclidean), "cosine" (1 − cosine similarity) or "dot" (−<x, e>,
      i.e. maximum inner product). See `reference.py` for the exact rule and NaN policy.
    impl: "auto" (the implementation measured fastest for this backend and D, see
      measured.py: today pallas_gpu on GPU, pallas_tpu on TPU, xla elsewhere), "xla" (tiled
      scan, never holds the N×K matrix), "pallas_gpu" (Triton), "mosaic_gpu" (Mosaic GPU,
      Hopper) / "pallas_tpu" (fused Pallas kernels; each raises a RuntimeError on another
      backend) or "reference" (materializes N×K; the baseline).

  Returns:
    indices: [...] int32, ties to the lowest index; dist: [...] f32 under `metric`.
    Neither carries a gradient: gather the code and compute losses from it.
  """
  if metric not in METRICS:
    raise ValueError(f"metric must be one of {METRICS}; got {metric!r}")
  x, codebook = jnp.asarray(x), jnp.asarray(codebook)
  if codebook.ndim != 2 or codebook.shape[0] == 0:
    raise ValueError(f"codebook must be [K, D] with K >= 1; got shape {tuple(codebook.shape)}")
  if x.ndim == 0 or x.shape[-1] != codebook.shape[1]:
    raise ValueError(f"x must be [..., D] with D={codebook.shape[1]} (the codebook's); "
                     f"got x.shape={tuple(x.shape)}")
  for name, a in (("x", x), ("codebook", codebook)):
    if not jnp.issubdtype(a.dtype, jnp.floating):
      raise TypeError(f"{name} must be a floating-point array; got dtype {a.dtype}")
  impl = _resolve(impl, codebook.shape[1])
  dtype = jnp.result_type(x.dtype, codebook.dtype)
  x = jax.lax.stop_gradient(x.astype(dtype))
  codebook = jax.lax.stop_gradient(codebook.astype(dtype))
  lead = x.shape[:-1]
  if math.prod(lead) == 0:  # no rows: no kernel to launch (a grid of zero programs)
    return jnp.zeros(lead, jnp.int32), jnp.zeros(lead, jnp.float32)
  idx, dist = _IMPLEMENTATIONS[impl](x.reshape(-1, x.shape[-1]), codebook, metric=metric)
  return idx.reshape(lead), dist.reshape(lead)
