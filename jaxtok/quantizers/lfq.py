"""LFQ: Yu et al. 2023, "Language Model Beats Diffusion: Tokenizer is Key to Visual Generation"."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.quantizers.base import (
    QuantizerOutput, check_indices, check_last_dim, code_usage_metrics, per_channel,
    straight_through)

MAX_BITS = 31  # ids are int32
# Which channel is the id's least significant bit: "lsb" channel 0 (jaxtok's default), "msb"
# channel 0 is the most significant (vector-quantize-pytorch, Open-MAGVIT2, the BSQ code).
BIT_ORDERS = ("lsb", "msb")


def validate_bits(bits: int, group_bits: int, bit_order: str = "lsb") -> None:
  if not 1 <= bits <= MAX_BITS:
    raise ValueError(f"bits must be in [1, {MAX_BITS}] so ids fit in int32; got bits={bits}")
  if group_bits < 1:
    raise ValueError(f"entropy_group_bits must be >= 1; got {group_bits}")
  if bit_order not in BIT_ORDERS:
    raise ValueError(f"bit_order must be one of {BIT_ORDERS}; got {bit_order!r}")


def _bit_positions(bits: int, bit_order: str) -> jax.Array:
  """The power of two each channel weighs: channel i -> i ("lsb") or bits - 1 - i ("msb")."""
  positions = jnp.arange(bits, dtype=jnp.int32)
  return positions if bit_order == "lsb" else bits - 1 - positions


def sign_codes(z: jax.Array, value: float) -> jax.Array:
  """+value where z > 0, -value elsewhere (zero included), f32."""
  return jnp.where(z > 0, jnp.float32(value), jnp.float32(-value))


def codes_to_indices(codes: jax.Array, bit_order: str = "lsb") -> jax.Array:
  """Ids [...] int32 of binary codes [..., B] (a channel > 0 is a 1 bit).

  bit_order "lsb": channel i weighs 2^i (channel 0 is the least significant bit). "msb":
  channel i weighs 2^(B-1-i), the order of vector-quantize-pytorch's LFQ (its `mask` buffer
  2^(B-1), ..., 1), Open-MAGVIT2 and the BSQ reference code, whose ids therefore map exactly.
  """
  weights = jnp.left_shift(jnp.int32(1), _bit_positions(codes.shape[-1], bit_order))
  bits = (codes > 0).astype(jnp.int32)
  return jnp.sum(bits * per_channel(weights, bits.ndim), axis=-1, dtype=jnp.int32)


def indices_to_codes(indices: jax.Array, bits: int, value: float = 1.0,
                     bit_order: str = "lsb") -> jax.Array:
  """Codes [..., bits] f32 in {-value, +value} of int ids [...] (inverse of codes_to_indices
  with the same bit_order)."""
  indices = jnp.asarray(indices).astype(jnp.int32)[..., None]
  shifts = per_channel(_bit_positions(bits, bit_order), indices.ndim)
  bit = jnp.right_shift(indices, shifts) & 1
  return sign_codes(bit, value)


def _entropy(probs: jax.Array, axis: int = -1) -> jax.Array:
  logs = jnp.log(jnp.where(probs > 0, probs, 1.0))
  return -jnp.sum(probs * logs, axis=axis)


def binary_code_entropies(z: jax.Array, *, value: float, temperature: float,
                          group_bits: int) -> tuple[jax.Array, jax.Array]:
  """Per-sample and codebook entropy (nats, f32) of the soft assignment of z to {±value}^B.

  The soft assignment is q(c|z) = softmax_c(-||z - c||^2 / temperature) over all 2^B codes.
  As ||z||^2 and ||c||^2 = B·value^2 do not depend on c, the logits are 2 z·c / temperature =
  Σ_b 2 z_b c_b / temperature, so q(·|z) is a product over the B bits: any split of the bits
  into groups gives q(c|z) = Π_g q_g(c_g|z_g), with q_g a softmax over the group's 2^g
  sub-codes. The bits are split into consecutive groups of `group_bits` (the last may be
  smaller); memory is N·Σ_g 2^g, never N·2^B.

  Returns, over the N vectors of z [..., B] (all leading axes):
    per_sample: mean_n H(q(·|z_n)) = mean_n Σ_g H(q_g(·|z_n,g)). EXACT for any grouping.
    codebook: Σ_g H(p̄_g), where p̄ = mean_n q(·|z_n) is the batch-averaged code distribution
      and p̄_g its marginal on group g (= mean_n q_g(·|z_n,g)). This is the FACTORIZED
      ESTIMATE of H(p̄): p̄ is a mixture of product distributions, not itself a product, and by
      subadditivity Σ_g H(p̄_g) >= H(p̄), with equality when there is a single group
      (group_bits >= B: exact, at N·2^B memory) or the groups are independent under p̄.
      Larger groups give a tighter bound. (BSQ's reference code computes the same estimate.)
  """
  z = z.reshape(-1, z.shape[-1]).astype(jnp.float32)
  bits = z.shape[-1]
  per_sample = jnp.zeros((), jnp.float32)
  codebook = jnp.zeros((), jnp.float32)
  for start in range(0, bits, group_bits):
    g = min(group_bits, bits - start)
    sub_codes = indices_to_codes(jnp.arange(2**g), g, value)  # [2^g, g]
    logits = 2.0 * (z[:, start:start + g] @ sub_codes.T) / temperature  # [N, 2^g]
    log_q = jax.nn.log_softmax(logits, axis=-1)
    q = jnp.exp(log_q)
    per_sample += jnp.mean(-jnp.sum(q * log_q, axis=-1))
    codebook += _entropy(jnp.mean(q, axis=0))
  return per_sample, codebook


def binary_quantizer_output(z: jax.Array, q: jax.Array, z_dtype, *, commitment: jax.Array,
                            commitment_weight: float, entropy_weight: float,
                            diversity_gamma: float, value: float, temperature: float,
                            group_bits: int, bit_order: str = "lsb") -> QuantizerOutput:
  """Assembles the LFQ/BSQ output from f32 z (the vector quantized) and its code q.

  loss = commitment_weight·commitment + entropy_weight·(per_sample − diversity_gamma·codebook).
  """
  indices = codes_to_indices(q, bit_order)
  per_sample, codebook = binary_code_entropies(
      z, value=value, temperature=temperature, group_bits=group_bits)
  loss = (commitment_weight * commitment
          + entropy_weight * (per_sample - diversity_gamma * codebook))
  metrics = dict(code_usage_metrics(indices, 2**q.shape[-1]), per_sample_entropy=per_sample,
                 codebook_entropy=codebook, commitment=commitment)
  return QuantizerOutput(quantized=straight_through(z, q).astype(z_dtype), indices=indices,
                         loss=loss.astype(jnp.float32),
                         metrics={k: v.astype(jnp.float32) for k, v in metrics.items()})


class LFQ(nn.Module):
  """Lookup-free quantization: each channel of z is one bit, quantized to ±scale by its sign.

  z [..., B] with B = bits -> quantized [..., B] in z's dtype (maths in f32), straight-through
  (identity gradient); indices [...] int32, channel i weighing 2^i with bit_order "lsb" (the
  default) or 2^(B-1-i) with "msb", the order of vector-quantize-pytorch and Open-MAGVIT2,
  whose ids then map exactly (see `codes_to_indices`); codebook_size 2^B (B <= 31).
  loss = commitment_weight·mean((z − sg(q))^2) (mean over elements)
       + entropy_weight·(per-sample entropy − diversity_gamma·codebook entropy),
  the entropies of softmax(-||z − c||^2 / temperature) computed group by group in f32: see
  `binary_code_entropies` for which is exact (per-sample) and which the factorized estimate
  (codebook). Defaults follow MAGVIT-v2 as commonly reproduced (commitment 0.25, entropy 0.1,
  gamma 1, temperature 0.01). The loss is computed in evaluation too (validation losses).
  metrics: usage, perplexity (exact at any B; see base.code_usage_metrics), per_sample_entropy,
  codebook_entropy (the factorized estimate), commitment (unweighted).
  """

  bits: int  # B: channels of z, bits per token; codebook size 2^B
  scale: float = 1.0  # code values are ±scale
  commitment_weight: float = 0.25  # weight of mean((z − sg(q))^2)
  entropy_weight: float = 0.1  # weight of the whole entropy term
  diversity_gamma: float = 1.0  # weight of the codebook entropy inside the entropy term
  temperature: float = 0.01  # of the soft assignment softmax(-||z − c||^2 / temperature)
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

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    del train  # deterministic; the loss is returned in both modes
    check_last_dim(z, self.input_dim)
    z32 = z.astype(jnp.float32)
    q = sign_codes(z32, self.scale)
    commitment = jnp.mean(jnp.square(z32 - q))
    return binary_quantizer_output(
        z32, q, z.dtype, commitment=commitment, commitment_weight=self.commitment_weight,
        entropy_weight=self.entropy_weight, diversity_gamma=self.diversity_gamma,
        value=self.scale, temperature=self.temperature, group_bits=self.entropy_group_bits,
        bit_order=self.bit_order)

  def encode(self, z: jax.Array) -> jax.Array:
    """Token ids [...] int32 of z [..., B]."""
    check_last_dim(z, self.input_dim)
    return codes_to_indices(z, self.bit_order)

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    """Codes [..., B] f32 in {±scale}; equal to `quantized` of the z that gave the ids."""
    check_indices(indices, self.codebook_size)
    return indices_to_codes(indices, self.bits, self.scale, self.bit_order)
