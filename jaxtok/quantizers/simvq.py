"""SimVQ: Zhu et al. 2024, "Addressing Representation Collapse in Vector Quantized Models with
One Linear Layer".

The codebook is a frozen random basis B [K, D] times a learned linear map W [D, D]: codes = B·W.
Every code moves whenever W does, so the whole codebook's span is trained by the usual VQ losses
and no code is left dead. B lives in the "quantizer_state" collection (drawn from the "params"
rng at `init`, never updated, never seen by the optimizer: weight decay cannot shrink it); W is
the param "code_transform/kernel". Lookup, losses and estimators are vq.py's pure functions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.kernels.nearest_code import nearest_code
from jaxtok.quantizers.base import (
    QuantizerOutput, check_indices, check_last_dim, code_usage_metrics)
from jaxtok.quantizers.vq import (
    ESTIMATORS, METRICS, STATE, l2_normalize, quantize, validate_choice)


class SimVQ(nn.Module):
  """Vector quantization of z [..., D] against the reparameterized codebook B·W.

  Outputs as `VectorQuantizer` without EMA: loss = codebook_weight·codebook_loss (trains W) +
  beta·commitment_loss; metrics usage, perplexity, codebook_loss, commitment_loss.
  """

  codebook_size: int  # K codes
  dim: int  # D: channels of z, of the codes and of `quantized`
  metric: str = "l2"  # "l2", or "cosine": z and codes l2-normalized
  beta: float = 0.25  # commitment weight
  codebook_weight: float = 1.0  # codebook-loss weight (the loss that trains W)
  estimator: str = "ste"  # "ste" (straight-through) or "rotation" (rotation trick)
  nearest_code_impl: str = "auto"  # kernels.nearest_code impl: "auto", "xla", "pallas_gpu", ...

  def __post_init__(self):
    validate_choice("metric", self.metric, METRICS)
    validate_choice("estimator", self.estimator, ESTIMATORS)
    if self.codebook_size < 1 or self.dim < 1:
      raise ValueError(f"codebook_size and dim must be >= 1; got {self.codebook_size}, "
                       f"{self.dim}")
    super().__post_init__()

  @property
  def input_dim(self) -> int:
    return self.dim

  @property
  def code_dim(self) -> int:
    return self.dim

  def setup(self):
    shape = (self.codebook_size, self.dim)
    # N(0, 1/D) rows: ||b_k|| ≈ 1, so the initial codes B·W have the scale of W's columns.
    self.basis = self.variable(STATE, "frozen_codebook", lambda: jax.random.normal(
        self.make_rng("params"), shape, jnp.float32) * self.dim ** -0.5)
    self.code_transform = nn.Dense(self.dim, use_bias=False, name="code_transform")

  def get_codebook(self) -> jax.Array:
    """The effective codes [K, D] f32: sg(B)·W (l2-normalized for "cosine")."""
    c = self.code_transform(jax.lax.stop_gradient(self.basis.value)).astype(jnp.float32)
    return l2_normalize(c) if self.metric == "cosine" else c

  def _to_code_space(self, z: jax.Array) -> jax.Array:
    z = z.astype(jnp.float32)
    return l2_normalize(z) if self.metric == "cosine" else z

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    del train  # nothing random and no state to update: training only differs by the optimizer
    check_last_dim(z, self.dim)
    lead = z.shape[:-1]
    q, idx, codebook_loss, commitment_loss = quantize(
        self._to_code_space(z).reshape(-1, self.dim), self.get_codebook(),
        metric=self.metric, estimator=self.estimator, impl=self.nearest_code_impl)
    loss = self.codebook_weight * codebook_loss + self.beta * commitment_loss
    metrics = {**code_usage_metrics(idx, self.codebook_size),
               "codebook_loss": codebook_loss, "commitment_loss": commitment_loss}
    return QuantizerOutput(quantized=q.reshape(*lead, self.dim).astype(z.dtype),
                           indices=idx.reshape(lead), loss=loss.astype(jnp.float32),
                           metrics=metrics)

  def encode(self, z: jax.Array) -> jax.Array:
    """Token ids [...] int32 of z [..., D]."""
    check_last_dim(z, self.dim)
    return nearest_code(self._to_code_space(z), self.get_codebook(), metric=self.metric,
                        impl=self.nearest_code_impl)[0]

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes [..., D] f32 of ids [...]; equal to `quantized` of the z that gave the ids."""
    check_indices(indices, self.codebook_size)
    return jnp.take(self.get_codebook(), jnp.asarray(indices), axis=0)
