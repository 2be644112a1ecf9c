"""VQ: van den Oord et al. 2017, "Neural Discrete Representation Learning" (VQ-VAE).

With EMA codebooks (VQ-VAE-2), low-dimensional l2-normalized codes (ViT-VQGAN, LlamaGen), data
init (sample / k-means++), dead-code restarts (Jukebox), an entropy penalty (MaskGIT, LlamaGen)
and the rotation trick (Fifty et al. 2024).

Data init and restarts rewrite codes inside `apply`, where "params" is not mutable, so a learned
codebook (use_ema=False) gets a state "codebook_offset": the codebook is param + offset, whose
gradient reaches the param unchanged, so training goes on from the rewritten rows. With use_ema
the codebook is state too ("codebook", "counts", "sums"). State changes only under train=True.

Shape letters: N flattened vectors, K codes, D input channels, C code channels.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.kernels.nearest_code import nearest_code
from jaxtok.quantizers.base import (
    QuantizerOutput, check_indices, check_last_dim, code_usage_metrics, l2_normalize,
    straight_through)

STATE = "quantizer_state"
METRICS = ("l2", "cosine")
ESTIMATORS = ("ste", "rotation")
DATA_INITS = ("none", "sample", "kmeans++")
sg = jax.lax.stop_gradient


# ---------------------------------------------------------------- pure maths (no Flax)

def rotation_trick(e: jax.Array, q: jax.Array, eps: float = 1e-6) -> jax.Array:
  """q forward; gradient to e through q̃ = sg(λR)·e (Fifty et al. 2024, Algorithm 1).

  With ê = e/||e||, q̂ = q/||q||, r = (ê + q̂)/||ê + q̂||, R = I − 2rrᵀ + 2q̂êᵀ (the rotation
  taking ê to q̂ in their plane) and λ = ||q||/||e||: λRe = q, and ∂L/∂e = λRᵀ ∂L/∂q̃. R, λ are
  constants; q gets no gradient. Antiparallel e, q (r = 0) still map correctly: R = I + 2q̂êᵀ.
  """
  e, q = e.astype(jnp.float32), q.astype(jnp.float32)
  e_norm = jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), eps)
  q_norm = jnp.linalg.norm(q, axis=-1, keepdims=True)
  e_hat, q_hat = sg(e / e_norm), sg(q / jnp.maximum(q_norm, eps))
  r = sg(l2_normalize(e_hat + q_hat))
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  rotated = sg(q_norm / e_norm) * (e - 2.0 * dot(e, r) * r + 2.0 * dot(e, e_hat) * q_hat)
  return sg(q) + (rotated - sg(rotated))  # exact q forward, the rotation's gradient backward


def estimate(z: jax.Array, q: jax.Array, estimator: str) -> jax.Array:
  """The gradient estimator through the quantizer: "ste" or "rotation"."""
  if estimator == "ste":
    return straight_through(z, q)
  if estimator == "rotation":
    return rotation_trick(z, q)
  raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}")


def quantize(z_ND: jax.Array, codebook_KC: jax.Array, *, metric: str, estimator: str,
             impl: str = "auto"):
  """Nearest code of every row, its estimator output and the two VQ loss terms (all f32).

  z and codebook must already be in code space (projected, and l2-normalized for "cosine").
  Returns (quantized [N, C], indices [N] int32, codebook_loss, commitment_loss) with
  codebook_loss = mean ||sg(z) − q||² (trains the codebook) and commitment_loss =
  mean ||z − sg(q)||² (trains the encoder), both means over all N·C entries.
  """
  idx, _ = nearest_code(z_ND, codebook_KC, metric=metric, impl=impl)
  q = jnp.take(codebook_KC.astype(jnp.float32), idx, axis=0)
  z = z_ND.astype(jnp.float32)
  codebook_loss = jnp.mean(jnp.square(sg(z) - q))
  commitment_loss = jnp.mean(jnp.square(z - sg(q)))
  return estimate(z, q, estimator), idx, codebook_loss, commitment_loss


def entropy_penalty(z_ND: jax.Array, codebook_KC: jax.Array, *, temperature: float,
                    axis_name: str | None = None) -> jax.Array:
  """mean_n H(p_n) − H(mean_n p_n), p_n = softmax_k(−||z_n − e_k||² / temperature), in nats.

  Minimizing it makes each assignment confident (low per-sample entropy) and the batch use many
  codes (high entropy of the average). The average is pmean-ed over `axis_name` when given.
  Materializes the [N, K] matrix: keep N·K modest. (LlamaGen's compute_entropy_loss.)
  """
  z, e = z_ND.astype(jnp.float32), codebook_KC.astype(jnp.float32)
  d2 = (jnp.sum(z * z, -1, keepdims=True) - 2.0 * z @ e.T + jnp.sum(e * e, -1)[None, :])
  logp = jax.nn.log_softmax(-d2 / temperature, axis=-1)
  p = jnp.exp(logp)
  sample_entropy = -jnp.mean(jnp.sum(p * logp, axis=-1))
  avg = jnp.mean(p, axis=0)
  if axis_name is not None:
    avg = jax.lax.pmean(avg, axis_name)
  avg_entropy = -jnp.sum(avg * jnp.log(jnp.maximum(avg, 1e-30)))
  return sample_entropy - avg_entropy


def assignment_stats(idx_N: jax.Array, x_NC: jax.Array, k: int):
  """Per-code counts [K] and sums [K, C] of the rows of x assigned to each code (f32)."""
  x = sg(x_NC.astype(jnp.float32))
  counts = jax.ops.segment_sum(jnp.ones(idx_N.shape, jnp.float32), idx_N, num_segments=k)
  return counts, jax.ops.segment_sum(x, idx_N, num_segments=k)


def ema_update(counts_K, sums_KC, batch_counts_K, batch_sums_KC, *, decay: float, eps: float):
  """One EMA codebook step (van den Oord et al. 2017, App. A.1) with Laplace smoothing.

  counts ← decay·counts + (1−decay)·batch_counts;  sums ← decay·sums + (1−decay)·batch_sums;
  n = Σ counts;  smoothed_k = (counts_k + eps) / (n + K·eps) · n;  codebook_k = sums_k / smoothed_k.
  Smoothing keeps unused codes finite; uniform counts are left unchanged by it.
  Returns (counts, sums, codebook), all f32.
  """
  counts = decay * counts_K + (1.0 - decay) * batch_counts_K
  sums = decay * sums_KC + (1.0 - decay) * batch_sums_KC
  n = jnp.sum(counts)
  smoothed = (counts + eps) / (n + counts.shape[0] * eps) * n
  return counts, sums, sums / smoothed[:, None]


def choose_rows(x_NC: jax.Array, k: int, key: jax.Array) -> jax.Array:
  """k random rows of x, all distinct when k <= N (repeating a random order otherwise)."""
  n = x_NC.shape[0]
  return jnp.take(x_NC, jax.random.permutation(key, n)[jnp.arange(k) % n], axis=0)


def kmeans_plusplus(x_NC: jax.Array, k: int, key: jax.Array) -> jax.Array:
  """k-means++ seeding (Arthur & Vassilvitskii 2007): k rows of x [N, C], each next one drawn
  with probability ∝ its squared distance to the nearest row drawn so far. O(N·C) per row."""
  x = sg(x_NC.astype(jnp.float32))
  keys = jax.random.split(key, k)
  first = x[jax.random.randint(keys[0], (), 0, x.shape[0])]
  d2 = jnp.sum(jnp.square(x - first[None]), axis=-1)
  centers = jnp.zeros((k, x.shape[1]), jnp.float32).at[0].set(first)

  def body(i, carry):
    centers, d2 = carry
    # Once every distinct row is a centre all d2 are 0: then draw uniformly.
    logits = jnp.where(jnp.sum(d2) > 0, jnp.log(d2), 0.0)
    c = x[jax.random.categorical(keys[i], logits)]
    return centers.at[i].set(c), jnp.minimum(d2, jnp.sum(jnp.square(x - c[None]), axis=-1))

  return jax.lax.fori_loop(1, k, body, (centers, d2))[0]


def restart_dead_codes(codebook_KC, counts_K, candidates_NC, key, *, threshold: float,
                       axis_name: str | None = None):
  """Replaces every code with counts < threshold by a random row of `candidates` (Jukebox).

  Restarted codes get counts = threshold, so a code that still wins nothing is restarted again
  at the next step. With `axis_name`, each code's replacement is taken from one randomly chosen
  device and broadcast (psum), so the codebook stays identical everywhere: `key` must be.
  Returns (codebook, counts, dead [K] bool).
  """
  k = codebook_KC.shape[0]
  dead = counts_K < threshold
  key_rows, key_src = jax.random.split(key)
  fresh = choose_rows(sg(candidates_NC.astype(jnp.float32)), k, key_rows)
  if axis_name is not None:
    src = jax.random.randint(key_src, (k,), 0, jax.lax.psum(1, axis_name))
    mine = (src == jax.lax.axis_index(axis_name))[:, None]
    fresh = jax.lax.psum(jnp.where(mine, fresh, 0.0), axis_name)
  codebook = jnp.where(dead[:, None], fresh, codebook_KC)
  return codebook, jnp.where(dead, jnp.float32(threshold), counts_K), dead


def data_init_codes(x_NC: jax.Array, k: int, key: jax.Array, *, method: str,
                    axis_name: str | None = None) -> jax.Array:
  """k initial codes from the rows of x: "sample" (random rows) or "kmeans++". With
  `axis_name` the rows of all devices are gathered first, so every device gets the same codes."""
  if axis_name is not None:
    x_NC = jax.lax.all_gather(x_NC, axis_name, tiled=True)
  if method == "sample":
    return choose_rows(x_NC.astype(jnp.float32), k, key)
  if method == "kmeans++":
    return kmeans_plusplus(x_NC, k, key)
  raise ValueError(f"data_init must be one of {DATA_INITS}; got {method!r}")


def validate_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}; got {value!r}")


# ---------------------------------------------------------------- the module

class VectorQuantizer(nn.Module):
  """Nearest-neighbour vector quantization of z [..., D] against K codes.

  `quantized` [..., D] is in z's dtype (maths in f32), `indices` [...] int32. `loss` =
  codebook_weight·codebook_loss (omitted with use_ema: the EMA moves the codebook) +
  beta·commitment_loss (+ entropy_weight·entropy_loss). metrics: usage, perplexity,
  codebook_loss, commitment_loss (unweighted), entropy_loss (if weighted), restarted (number
  of codes restarted this step, if restarts are on).
  """

  codebook_size: int  # K codes
  dim: int  # D: channels of z and of `quantized`
  codebook_dim: int | None = None  # C < D: Dense D→C before the lookup and C→D after; None: C = D
  metric: str = "l2"  # "l2", or "cosine": z and codes l2-normalized (ViT-VQGAN, LlamaGen)
  beta: float = 0.25  # commitment weight
  codebook_weight: float = 1.0  # codebook-loss weight (unused with use_ema)
  use_ema: bool = False  # codebook = EMA of assigned z (state) instead of a learned param
  ema_decay: float = 0.99  # EMA decay of counts and sums
  ema_eps: float = 1e-5  # Laplace smoothing of the EMA counts
  ema_axis_name: str | None = None  # data-parallel axis: in train steps, counts, sums, restarts
  #   and the entropy's batch average are pmean-ed over it (shard_map / pmap / named vmap)
  data_init: str = "none"  # "none" | "sample" | "kmeans++": codes from the first train batch
  restart_threshold: float = 0.0  # restart codes whose EMA count (assignments per step, per
  #   device) falls below this, e.g. 1.0; 0: off
  entropy_weight: float = 0.0  # weight of `entropy_penalty` (0: not computed)
  entropy_temperature: float = 0.01  # softmax temperature of the entropy penalty
  estimator: str = "ste"  # "ste" (straight-through) or "rotation" (rotation trick)
  codebook_init_scale: float = 1.0  # std of the random normal initial codebook
  nearest_code_impl: str = "auto"  # kernels.nearest_code impl: "auto", "xla", "pallas_gpu", ...

  def __post_init__(self):
    validate_choice("metric", self.metric, METRICS)
    validate_choice("estimator", self.estimator, ESTIMATORS)
    validate_choice("data_init", self.data_init, DATA_INITS)
    if self.codebook_size < 1 or self.dim < 1 or (self.codebook_dim or 1) < 1:
      raise ValueError(f"codebook_size, dim and codebook_dim must be >= 1; got "
                       f"{self.codebook_size}, {self.dim}, {self.codebook_dim}")
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"ema_decay must lie in [0, 1); got {self.ema_decay}")
    super().__post_init__()

  @property
  def input_dim(self) -> int:
    return self.dim

  @property
  def code_dim(self) -> int:
    return self.dim

  @property
  def _c(self) -> int:
    return self.codebook_dim or self.dim

  @property
  def _tracks_counts(self) -> bool:
    return self.use_ema or self.restart_threshold > 0

  @property
  def _has_offset(self) -> bool:
    return not self.use_ema and (self.data_init != "none" or self.restart_threshold > 0)

  def setup(self):
    shape = (self.codebook_size, self._c)
    init = nn.initializers.normal(self.codebook_init_scale)
    if self.codebook_dim is not None:
      self.proj_in = nn.Dense(self.codebook_dim, name="proj_in")
      self.proj_out = nn.Dense(self.dim, name="proj_out")
    if self.use_ema:
      self.ema_codebook = self.variable(
          STATE, "codebook", lambda: init(self.make_rng("params"), shape, jnp.float32))
      self.sums = self.variable(STATE, "sums", lambda: self.ema_codebook.value)
    else:
      self.codebook = self.param("codebook", init, shape, jnp.float32)
    if self._has_offset:
      self.offset = self.variable(STATE, "codebook_offset", jnp.zeros, shape, jnp.float32)
    if self._tracks_counts:  # ones: uniform, unchanged by Laplace smoothing
      self.counts = self.variable(STATE, "counts", jnp.ones, (self.codebook_size,), jnp.float32)
    if self.data_init != "none":
      self.initialized = self.variable(STATE, "initialized", lambda: jnp.array(False))

  def _raw_codebook(self) -> jax.Array:
    if self.use_ema:
      return self.ema_codebook.value
    return self.codebook + self.offset.value if self._has_offset else self.codebook

  def get_codebook(self) -> jax.Array:
    """The effective codes [K, C] f32 that `quantized` is built from (before proj_out)."""
    c = self._raw_codebook().astype(jnp.float32)
    return l2_normalize(c) if self.metric == "cosine" else c

  def _to_code_space(self, z: jax.Array) -> jax.Array:
    z = z.astype(jnp.float32)
    if self.codebook_dim is not None:
      z = self.proj_in(z)
    return l2_normalize(z) if self.metric == "cosine" else z

  def _from_code_space(self, q: jax.Array) -> jax.Array:
    return self.proj_out(q) if self.codebook_dim is not None else q

  def _write_codes(self, new_KC: jax.Array, rows_K: jax.Array) -> None:
    """Sets the rows `rows_K` (bool) of the effective raw codebook to those of new_KC."""
    rows = rows_K[:, None]
    if self.use_ema:  # the new rows' EMA sums restart from their (already reset) counts
      self.ema_codebook.value = jnp.where(rows, new_KC, self.ema_codebook.value)
      self.sums.value = jnp.where(rows, new_KC * self.counts.value[:, None], self.sums.value)
    else:
      self.offset.value = jnp.where(rows, new_KC - sg(self.codebook), self.offset.value)

  def _data_init(self, zc_NC: jax.Array) -> None:
    key = self.make_rng("quantizer")
    todo = jnp.logical_not(self.initialized.value)
    k, c = self.codebook_size, self._c
    codes = jax.lax.cond(  # the expensive branch runs once
        todo, lambda: data_init_codes(sg(zc_NC), k, key, method=self.data_init,
                                      axis_name=self.ema_axis_name),
        lambda: jnp.zeros((k, c), jnp.float32))
    if self._tracks_counts:
      self.counts.value = jnp.where(todo, 1.0, self.counts.value)
    self._write_codes(codes, jnp.broadcast_to(todo, (k,)))
    self.initialized.value = jnp.array(True)

  def _update_state(self, zc_NC: jax.Array, idx_N: jax.Array) -> dict[str, jax.Array]:
    """EMA statistics and codebook, then dead-code restarts; returns their metrics."""
    k = self.codebook_size
    batch_counts, batch_sums = assignment_stats(idx_N, zc_NC, k)
    if self.ema_axis_name is not None:
      batch_counts = jax.lax.pmean(batch_counts, self.ema_axis_name)
      batch_sums = jax.lax.pmean(batch_sums, self.ema_axis_name)
    if self.use_ema:
      counts, sums, codebook = ema_update(
          self.counts.value, self.sums.value, batch_counts, batch_sums,
          decay=self.ema_decay, eps=self.ema_eps)
      self.counts.value, self.sums.value, self.ema_codebook.value = counts, sums, codebook
    elif self._tracks_counts:
      d = self.ema_decay
      self.counts.value = d * self.counts.value + (1.0 - d) * batch_counts
    if self.restart_threshold <= 0:
      return {}
    codebook, counts, dead = restart_dead_codes(
        sg(self._raw_codebook()), self.counts.value, zc_NC, self.make_rng("quantizer"),
        threshold=self.restart_threshold, axis_name=self.ema_axis_name)
    self.counts.value = counts
    self._write_codes(codebook, dead)
    return {"restarted": jnp.sum(dead).astype(jnp.float32)}

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    check_last_dim(z, self.dim)
    lead = z.shape[:-1]
    zc = self._to_code_space(z).reshape(-1, self._c)
    update = train and not self.is_initializing() and (
        self._tracks_counts or self.data_init != "none")
    if update and not self.is_mutable_collection(STATE):
      raise ValueError(f"VectorQuantizer(train=True) updates its {STATE!r} collection (EMA, "
                       f"data init or restarts): apply with mutable=[{STATE!r}]")
    if update and self.data_init != "none":
      self._data_init(zc)
    codebook = self.get_codebook()
    q, idx, codebook_loss, commitment_loss = quantize(
        zc, codebook, metric=self.metric, estimator=self.estimator,
        impl=self.nearest_code_impl)
    loss = self.beta * commitment_loss
    if not self.use_ema:
      loss = loss + self.codebook_weight * codebook_loss
    metrics = {**code_usage_metrics(idx, self.codebook_size),
               "codebook_loss": codebook_loss, "commitment_loss": commitment_loss}
    if self.entropy_weight > 0:
      in_step = train and not self.is_initializing()  # outside a step the axis may be unbound
      ent = entropy_penalty(zc, codebook, temperature=self.entropy_temperature,
                            axis_name=self.ema_axis_name if in_step else None)
      loss = loss + self.entropy_weight * ent
      metrics["entropy_loss"] = ent
    if update:
      metrics.update(self._update_state(zc, idx))
    elif self.restart_threshold > 0:
      metrics["restarted"] = jnp.zeros((), jnp.float32)
    quantized = self._from_code_space(q).reshape(*lead, self.dim).astype(z.dtype)
    return QuantizerOutput(quantized=quantized, indices=idx.reshape(lead),
                           loss=loss.astype(jnp.float32), metrics=metrics)

  def encode(self, z: jax.Array) -> jax.Array:
    """Token ids [...] int32 of z [..., D]."""
    check_last_dim(z, self.dim)
    zc = self._to_code_space(z)
    return nearest_code(zc, self.get_codebook(), metric=self.metric,
                        impl=self.nearest_code_impl)[0]

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes [..., D] f32 of ids [...]; equal to `quantized` of the z that gave the ids."""
    check_indices(indices, self.codebook_size)
    q = jnp.take(self.get_codebook(), jnp.asarray(indices), axis=0)
    return self._from_code_space(q).astype(jnp.float32)
