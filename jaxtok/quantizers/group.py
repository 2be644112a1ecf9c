"""Grouped quantization: Jégou et al. 2011, "Product Quantization for Nearest Neighbor Search"."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.quantizers.base import QuantizerOutput, check_last_dim


class GroupQuantizer(nn.Module):
  """Splits the channels of z into G equal groups, each quantized by its own copy of a module.

  `quantizer` is a template: it is never called itself; G copies of it, named group_0 ...
  group_{G−1}, each own their parameters, state and rng draws. z [..., G·D] (D the template's
  input_dim) -> quantized [..., G·C] (C its code_dim) in z's dtype, the groups' outputs
  concatenated in order. Indices stack the groups' ids on a new LAST axis: [..., G] for
  single-codebook templates, [..., L, G] for residual ones ([..., L]); `codebook_size` is the
  template's, per group. loss is the sum of the groups' losses; every metric is averaged over
  groups, and "usage_g{i}" keeps group i's usage when the template reports one.
  """

  quantizer: nn.Module  # template quantizer, copied once per group
  groups: int  # G

  def __post_init__(self):
    if self.groups < 1:
      raise ValueError(f"groups must be >= 1; got {self.groups}")
    super().__post_init__()

  def setup(self):
    self.members = [self.quantizer.copy(name=f"group_{i}") for i in range(self.groups)]

  @property
  def input_dim(self) -> int:
    return self.groups * self.quantizer.input_dim

  @property
  def code_dim(self) -> int:
    return self.groups * self.quantizer.code_dim

  @property
  def codebook_size(self) -> int:
    return self.quantizer.codebook_size

  def _split(self, z: jax.Array) -> list[jax.Array]:
    check_last_dim(z, self.input_dim)
    return jnp.split(z, self.groups, axis=-1)

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    outs = [m(z_g, train=train) for m, z_g in zip(self.members, self._split(z))]
    metrics = {k: jnp.mean(jnp.stack([o.metrics[k] for o in outs])) for k in outs[0].metrics}
    if "usage" in outs[0].metrics:
      metrics |= {f"usage_g{i}": o.metrics["usage"] for i, o in enumerate(outs)}
    return QuantizerOutput(
        quantized=jnp.concatenate([o.quantized for o in outs], axis=-1),
        indices=jnp.stack([o.indices for o in outs], axis=-1),
        loss=sum(o.loss for o in outs), metrics=metrics)

  def encode(self, z: jax.Array) -> jax.Array:
    """Token ids [..., G] int32 (each group's ids on the last axis) of z [..., G·D]."""
    return jnp.stack([m.encode(z_g) for m, z_g in zip(self.members, self._split(z))], axis=-1)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes [..., G·C] f32 of ids [..., G]: each group's codes, concatenated."""
    if jnp.ndim(indices) == 0 or jnp.shape(indices)[-1] != self.groups:
      raise ValueError(f"indices must have last dimension G={self.groups} (one id per group); "
                       f"got indices.shape={tuple(jnp.shape(indices))}")
    return jnp.concatenate(
        [m.indices_to_codes(indices[..., i]) for i, m in enumerate(self.members)], axis=-1)
