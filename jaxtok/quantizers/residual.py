"""Residual quantization: Zeghidour et al. 2021, "SoundStream" (RVQ), and its FSQ variant.

Level i quantizes what the levels before it left: r_0 = z, q_i = Q_i(r_i), r_{i+1} = r_i − q_i,
quantized = Σ_i q_i, indices [..., L]. r_{i+1} subtracts each level's estimator output, not a
stopped copy (as EnCodec and DAC), so a stack of straight-through levels is straight-through as
a whole (vector-quantize-pytorch detaches, which scales the encoder's gradient by L).

Quantize dropout (SoundStream, train=True): one n ∈ [dropout_min_levels, L] per step (rng
"quantizer": keep it equal across data-parallel devices); only levels < n make up `quantized`
and `loss` and update their state. All L ids are still returned, as `encode` gives them, so they
are always valid; `indices_to_codes` decodes any prefix indices[..., :l].
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.quantizers.base import QuantizerOutput, check_last_dim, per_channel
from jaxtok.quantizers.fsq import FSQ, validate_levels


class _Residual(nn.Module):
  """The residual loop shared by ResidualVQ and ResidualFSQ. It declares no fields; subclasses
  declare num_quantizers, quantize_dropout, dropout_min_levels and implement `_level(i)` (the
  bound quantizer of level i) and `_scale(i, ndim)` (f32 per-channel scale of level i's input
  and output, shaped [1, ..., 1, D] of rank ndim, or None)."""

  def _check_levels(self):
    if self.num_quantizers < 1:
      raise ValueError(f"num_quantizers must be >= 1; got {self.num_quantizers}")
    if not 1 <= self.dropout_min_levels <= self.num_quantizers:
      raise ValueError(f"dropout_min_levels must lie in [1, num_quantizers="
                       f"{self.num_quantizers}]; got {self.dropout_min_levels}")

  def _level(self, i: int) -> nn.Module:
    raise NotImplementedError

  def _scale(self, i: int, ndim: int) -> jax.Array | None:
    raise NotImplementedError

  def _run_level(self, i: int, r: jax.Array, train: bool, active) -> QuantizerOutput:
    scale = self._scale(i, r.ndim)
    x = r if scale is None else r / scale
    if active is True:
      out = self._level(i)(x, train=train)
    else:  # only an active level trains: state updates happen in the taken branch only
      out = nn.cond(active, lambda m, x: m._level(i)(x, train=True),
                    lambda m, x: m._level(i)(x, train=False), self, x)
    q = out.quantized.astype(jnp.float32)
    return out._replace(quantized=q if scale is None else q * scale)

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    check_last_dim(z, self.input_dim)
    n_levels = self.num_quantizers
    dropout = (train and self.quantize_dropout and not self.is_initializing()
               and self.dropout_min_levels < n_levels)
    n_active = n_levels
    if dropout:
      n_active = jax.random.randint(self.make_rng("quantizer"), (), self.dropout_min_levels,
                                    n_levels + 1)
    r = z.astype(jnp.float32)
    quantized, loss, outs = None, jnp.zeros((), jnp.float32), []
    for i in range(n_levels):
      active = True if not dropout or i < self.dropout_min_levels else i < n_active
      out = self._run_level(i, r, train, active)
      r = r - out.quantized
      q = out.quantized if active is True else jnp.where(active, out.quantized, 0.0)
      quantized = q if quantized is None else quantized + q
      loss = loss + (out.loss if active is True else jnp.where(active, out.loss, 0.0))
      outs.append(out)
    metrics = {k: jnp.mean(jnp.stack([o.metrics[k] for o in outs]))
               for k in outs[0].metrics}
    if "restarted" in metrics:
      metrics["restarted"] = metrics["restarted"] * n_levels  # a total, not a mean
    metrics.update({f"usage_l{i}": o.metrics["usage"] for i, o in enumerate(outs)})
    metrics["active_levels"] = jnp.asarray(n_active, jnp.float32)
    return QuantizerOutput(quantized=quantized.astype(z.dtype),
                           indices=jnp.stack([o.indices for o in outs], axis=-1),
                           loss=loss, metrics=metrics)

  def encode(self, z: jax.Array) -> jax.Array:
    """Token ids [..., L] int32 of z [..., D]; level i in [..., i]."""
    return self(z, train=False).indices

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes [..., D] f32 of ids [..., l]: the sum of the first l <= L levels' codes."""
    indices = jnp.asarray(indices)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
      raise TypeError(f"indices must be an integer array (token ids); got dtype {indices.dtype}")
    if indices.ndim == 0 or not 1 <= indices.shape[-1] <= self.num_quantizers:
      raise ValueError(f"indices must be [..., l] with 1 <= l <= num_quantizers="
                       f"{self.num_quantizers} (a prefix of the levels); got shape "
                       f"{tuple(indices.shape)}")
    total = None
    for i in range(indices.shape[-1]):
      c = self._level(i).indices_to_codes(indices[..., i]).astype(jnp.float32)
      scale = self._scale(i, c.ndim)
      c = c if scale is None else c * scale
      total = c if total is None else total + c
    return total


class ResidualVQ(_Residual):
  """L levels of a codebook quantizer (VectorQuantizer, SimVQ) on successive residuals.

  `quantizer` is a template, cloned per level ("level_0" ... in the variables) or once
  ("shared") with shared_codebook. With a shared EMA codebook every level's call updates it,
  so it gets L EMA steps per training step (as in vector-quantize-pytorch).
  loss = Σ over active levels of their losses. metrics: the levels' metrics averaged
  ("restarted" summed), usage_l{i} per level, active_levels.
  """

  quantizer: nn.Module  # template quantizer for every level (its fields set K, D, EMA, ...)
  num_quantizers: int  # L levels
  shared_codebook: bool = False  # one quantizer (and codebook) used by every level
  quantize_dropout: bool = False  # train with a random prefix of levels (see module docstring)
  dropout_min_levels: int = 1  # fewest levels a quantize-dropout step keeps

  def __post_init__(self):
    self._check_levels()
    super().__post_init__()

  @property
  def input_dim(self) -> int:
    return self.quantizer.input_dim

  @property
  def code_dim(self) -> int:
    return self.quantizer.code_dim

  @property
  def codebook_size(self) -> int:
    return self.quantizer.codebook_size

  def setup(self):
    names = (["shared"] if self.shared_codebook else
             [f"level_{i}" for i in range(self.num_quantizers)])
    self.quantizers = [self.quantizer.clone(parent=self, name=name) for name in names]

  def _level(self, i: int) -> nn.Module:
    return self.quantizers[0 if self.shared_codebook else i]

  def _scale(self, i: int, ndim: int) -> None:
    return None


class ResidualFSQ(_Residual):
  """Residual FSQ (Mentzer et al. 2023 per level; vector-quantize-pytorch's scaling up to 1.25).

  FSQ codes lie on a grid of step 1/(L_c // 2) in [-1, 1] per channel c, so a residual is at most
  about half a step. Level i therefore quantizes r_i / s_i and outputs s_i · FSQ(r_i / s_i) with
  s_i = (levels − 1)^(−i) per channel: each level refines the previous one's grid by a factor
  levels − 1. One FSQ (it has no parameters) serves all levels; codebook_size = prod(levels).
  (vector-quantize-pytorch 1.26 changed its ResidualFSQ scaling; this one is that of <= 1.25.)
  loss is 0; metrics as ResidualVQ's.
  """

  levels: Sequence[int]  # FSQ levels per channel (D = len(levels))
  num_quantizers: int  # L residual levels
  quantize_dropout: bool = False  # train with a random prefix of levels (see module docstring)
  dropout_min_levels: int = 1  # fewest levels a quantize-dropout step keeps

  def __post_init__(self):
    object.__setattr__(self, "levels", validate_levels(self.levels))
    self._check_levels()
    super().__post_init__()

  @property
  def input_dim(self) -> int:
    return len(self.levels)

  @property
  def code_dim(self) -> int:
    return len(self.levels)

  @property
  def codebook_size(self) -> int:
    return math.prod(self.levels)

  def setup(self):
    self.fsq = FSQ(self.levels)

  def _level(self, i: int) -> nn.Module:
    return self.fsq

  def _scale(self, i: int, ndim: int) -> jax.Array:
    return per_channel((jnp.asarray(self.levels, jnp.float32) - 1.0) ** -float(i), ndim)
