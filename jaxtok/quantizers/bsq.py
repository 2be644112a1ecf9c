"""BSQ: Zhao et al. 2024, "Image and Video Tokenization with Binary Spherical Quantization"."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.quantizers.base import QuantizerOutput, check_indices, check_last_dim, l2_normalize
from jaxtok.quantizers.lfq import (
    binary_quantizer_output, codes_to_indices, indices_to_codes, sign_codes, validate_bits)


class BSQ(nn.Module):
  """Binary spherical quantization: project z onto the unit sphere, then binarize it there.

  z [..., B] -> u = z / ||z|| -> q = sign(u) / √B (a unit vector: every code lies on the
  sphere, so the quantization error is bounded); quantized = u + sg(q − u) in z's dtype (maths
  in f32): the gradient is the identity through the binarization and the Jacobian of the
  normalization before it. Bits, ids and entropy maths are LFQ's (`lfq.py`): indices [...]
  int32, channel i weighing 2^i with bit_order "lsb" (the default), 2^(B-1-i) with "msb" (the
  order of the BSQ reference code and vector-quantize-pytorch, whose ids then map exactly).
  loss = commitment_weight·mean_n ||u_n − sg(q_n)||^2 (summed over channels, as the reference)
       + entropy_weight·(per-sample entropy − diversity_gamma·codebook entropy) of the soft
  assignment softmax(-||u − c||^2 / temperature) over c in {±1/√B}^B, factorized over groups of
  `entropy_group_bits` (per-sample exact, codebook the factorized estimate: see
  `lfq.binary_code_entropies`). Defaults follow the released BSQ-ViT configs (commitment 0,
  the entropy term weighted 0.1, gamma 1, inverse temperature 1); the reference code also
  divides the entropy term by its inverse temperature: fold that into `entropy_weight`.
  metrics: usage, perplexity, per_sample_entropy, codebook_entropy, commitment (unweighted).
  """

  bits: int  # B: channels of z, bits per token; codebook size 2^B
  commitment_weight: float = 0.0  # weight of mean ||u − sg(q)||^2
  entropy_weight: float = 0.1  # weight of the whole entropy term
  diversity_gamma: float = 1.0  # weight of the codebook entropy inside the entropy term
  temperature: float = 1.0  # of the soft assignment softmax(-||u − c||^2 / temperature)
  entropy_group_bits: int = 9  # bits per entropy group: memory N·2^g per group
  bit_order: str = "lsb"  # "lsb": channel 0 is the ids' lowest bit; "msb": the highest

  def __post_init__(self):
    validate_bits(self.bits, self.entropy_group_bits, self.bit_order)
    super().__post_init__()

  @property
  def input_dim(self) -> int:
    return self.bits

  @property
  def code_dim(self) -> int:
    return self.bits

  @property
  def codebook_size(self) -> int:
    return 2**self.bits

  @property
  def code_value(self) -> float:
    return 1.0 / math.sqrt(self.bits)

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    del train  # deterministic; the loss is returned in both modes
    check_last_dim(z, self.input_dim)
    u = l2_normalize(z)
    q = sign_codes(u, self.code_value)
    commitment = jnp.mean(jnp.sum(jnp.square(u - q), axis=-1))
    return binary_quantizer_output(
        u, q, z.dtype, commitment=commitment, commitment_weight=self.commitment_weight,
        entropy_weight=self.entropy_weight, diversity_gamma=self.diversity_gamma,
        value=self.code_value, temperature=self.temperature, group_bits=self.entropy_group_bits,
        bit_order=self.bit_order)

  def encode(self, z: jax.Array) -> jax.Array:
    """Token ids [...] int32 of z [..., B]."""
    check_last_dim(z, self.input_dim)
    return codes_to_indices(l2_normalize(z), self.bit_order)  # as __call__: a tiny z_i may underflow to 0

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes [..., B] f32 in {±1/√B}; equal to `quantized` of the z that gave the ids."""
    check_indices(indices, self.codebook_size)
    return indices_to_codes(indices, self.bits, self.code_value, self.bit_order)
