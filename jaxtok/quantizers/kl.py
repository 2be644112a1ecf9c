"""KL: Rombach et al. 2022 (LDM), "High-Resolution Image Synthesis with Latent Diffusion Models"."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.quantizers.base import QuantizerOutput, check_last_dim

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # LDM's clamp


def gaussian_params(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, logvar) [..., dim] f32 from z [..., 2·dim]: first half mean, second half logvar."""
  mean, logvar = jnp.split(z.astype(jnp.float32), 2, axis=-1)
  return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)


def kl_to_standard_normal(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) per element: ½(mean² + var − 1 − logvar), f32."""
  return 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)


def no_discrete_tokens(what: str) -> TypeError:
  return TypeError(
      f"KLQuantizer.{what}: KL tokens are continuous; there are no discrete ids. Use "
      "__call__(z).quantized (a posterior sample when training, its mean otherwise) as the "
      "latent.")


class KLQuantizer(nn.Module):
  """Diagonal Gaussian bottleneck (LDM's DiagonalGaussianDistribution): continuous tokens.

  z [..., 2·dim] holds (mean, logvar), logvar clamped to [-30, 20]. quantized [..., dim] in z's
  dtype (maths in f32): with train=True a reparameterized sample mean + exp(logvar/2)·ε,
  ε ~ N(0, I) drawn from the "quantizer" rng stream; otherwise, or when `deterministic`, the
  mean.

  loss = kl_weight · mean over all elements of KL(q || N(0, I)). NORMALISATION: LDM sums the KL
  over C·H·W and averages over the batch; the per-element mean here makes `kl_weight` not
  depend on the latent size. LDM's kl_weight 1e-6 on a 32×32×4 latent equals kl_weight
  1e-6 × 4096 ≈ 4e-3 here. With `deterministic` (LDM's deterministic posterior: variance
  taken as 0, no sampling) the loss is 0; the "kl" metric still reports the predicted
  posterior's KL.

  There are no discrete ids: codebook_size is 0; indices is an int32 array of shape
  [..., 0] (no id per position, not a fake one); `encode` and `indices_to_codes` raise
  TypeError. Usage and perplexity are not defined for continuous tokens, so metrics has no
  "usage"/"perplexity" keys (a stand-in figure would be a false one); it reports "kl" (the
  per-element mean KL, unweighted) and "std" (the mean posterior standard deviation).
  """

  dim: int  # channels of the latent (code_dim); z has 2·dim
  kl_weight: float = 1e-6  # weight of the per-element mean KL (see the normalisation note)
  deterministic: bool = False  # never sample: quantized = mean, loss = 0

  @property
  def input_dim(self) -> int:
    return 2 * self.dim

  @property
  def code_dim(self) -> int:
    return self.dim

  @property
  def codebook_size(self) -> int:
    return 0

  def __call__(self, z: jax.Array, *, train: bool = False) -> QuantizerOutput:
    check_last_dim(z, self.input_dim)
    mean, logvar = gaussian_params(z)
    std = jnp.exp(0.5 * logvar)
    if train and not self.deterministic:
      latent = mean + std * jax.random.normal(self.make_rng("quantizer"), mean.shape, jnp.float32)
    else:
      latent = mean
    kl = jnp.mean(kl_to_standard_normal(mean, logvar))
    loss = jnp.zeros((), jnp.float32) if self.deterministic else self.kl_weight * kl
    return QuantizerOutput(
        quantized=latent.astype(z.dtype), indices=jnp.zeros((*z.shape[:-1], 0), jnp.int32),
        loss=loss.astype(jnp.float32), metrics={"kl": kl, "std": jnp.mean(std)})

  def encode(self, z: jax.Array) -> jax.Array:
    raise no_discrete_tokens("encode")

  def indices_to_codes(self, indices: jax.Array) -> jax.Array:
    raise no_discrete_tokens("indices_to_codes")
