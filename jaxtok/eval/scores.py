"""Inception Score (Salimans et al. 2016) and improved precision and recall (Kynkäänniemi et
al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models").

Inception Score follows the original (OpenAI's improved-GAN code, which torch-fidelity and the
ADM evaluator repeat): the softmax of the 1008 logits, the images cut into 10 consecutive
splits, exp(mean KL(p(y|x) || p(y))) per split, reported as mean and standard deviation.

Precision and recall estimate each manifold as the union of balls around its feature vectors,
each with the radius of its k-th nearest neighbour (k = 3) in its own set: precision is the
share of generated samples inside the real manifold, recall the share of real samples inside
the generated one. Distances are computed in blocks on the device, in f32.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def inception_score(logits_NK, *, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `splits` consecutive splits of exp(E_x KL(p(y|x) || p(y))), in float64."""
  logits = np.asarray(logits_NK, np.float64)
  if logits.ndim != 2 or logits.shape[0] < splits:
    raise ValueError(f"logits must be [N, K] with N >= splits={splits}; got {logits.shape}")
  logits = logits - logits.max(axis=1, keepdims=True)
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = np.log(np.exp(part).mean(axis=0, keepdims=True))
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


@functools.partial(jax.jit, static_argnames="k")
def _kth_distance_block(rows_BD, points_ND, *, k: int):
  """Squared distance from each row to its k-th nearest point, the row itself excluded (its
  own zero distance is the first of the k + 1 smallest)."""
  d = _sq_distances(rows_BD, points_ND)
  return -jax.lax.top_k(-d, k + 1)[0][:, k]


def _sq_distances(a_BD, b_ND):
  hp = jax.lax.Precision.HIGHEST
  a2 = jnp.sum(a_BD * a_BD, axis=1)[:, None]
  b2 = jnp.sum(b_ND * b_ND, axis=1)[None, :]
  return jnp.maximum(a2 + b2 - 2 * jnp.dot(a_BD, b_ND.T, precision=hp), 0.0)


@jax.jit
def _covered_block(query_BD, points_ND, radii_N):
  """Whether each query lies within some point's ball."""
  return jnp.any(_sq_distances(query_BD, points_ND) <= radii_N[None, :], axis=1)


def _blocks(fn, x: np.ndarray, block: int) -> np.ndarray:
  """fn over row blocks of x, the last one padded to `block` rows (one compile per shape)."""
  out = []
  for start in range(0, len(x), block):
    rows = x[start:start + block]
    n = len(rows)
    if n < block:
      rows = np.concatenate([rows, np.repeat(rows[-1:], block - n, axis=0)])
    out.append(np.asarray(fn(rows))[:n])
  return np.concatenate(out)


def manifold_radii(features_ND, *, k: int = 3, block: int = 1024) -> np.ndarray:
  """Squared k-NN radius of each feature vector within its own set [N] (N must exceed k)."""
  x = np.asarray(features_ND, np.float32)
  if x.ndim != 2 or x.shape[0] <= k:
    raise ValueError(f"features must be [N, D] with N > k={k}; got {x.shape}")
  points = jnp.asarray(x)
  return _blocks(lambda rows: _kth_distance_block(rows, points, k=k), x, min(block, len(x)))


def coverage(query_MD, points_ND, radii_N, *, block: int = 1024) -> float:
  """Share of `query` vectors inside the union of balls (points, squared radii)."""
  q = np.asarray(query_MD, np.float32)
  points, radii = jnp.asarray(points_ND, jnp.float32), jnp.asarray(radii_N, jnp.float32)
  inside = _blocks(lambda rows: _covered_block(rows, points, radii), q, min(block, len(q)))
  return float(np.mean(inside))


def precision_recall(real_ND, fake_MD, *, k: int = 3, block: int = 1024) -> dict[str, float]:
  """{"precision", "recall"} of generated features `fake` against `real` (k-NN manifolds)."""
  real = np.asarray(real_ND, np.float32)
  fake = np.asarray(fake_MD, np.float32)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"real and fake must be [N, D] and [M, D]; got {real.shape} and "
                     f"{fake.shape}")
  precision = coverage(fake, real, manifold_radii(real, k=k, block=block), block=block)
  recall = coverage(real, fake, manifold_radii(fake, k=k, block=block), block=block)
  return {"precision": precision, "recall": recall}
