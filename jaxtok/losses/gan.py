"""Adversarial losses for tokenizer training: hinge (Lim & Ye 2017) and non-saturating
(Goodfellow et al. 2014) losses, taming's adaptive generator weight (Esser et al. 2021),
LeCam regularisation (Tseng et al. 2021) and the discriminator start schedule.

Pure functions that upcast their inputs to f32 first, so bf16 runs get f32 loss maths. Logits
may have any shape (PatchGAN maps [B, H', W', 1], StyleGAN [B]); means run over every element.
"""

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

GanLossKind = Literal["hinge", "non_saturating"]


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def hinge_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean relu(1 - D(x)) + mean relu(1 + D(G(z)))), as taming / LlamaGen.

  MAGVIT's discriminator loss is this without the 0.5.
  """
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - _f32(logits_real)))
                + jnp.mean(jax.nn.relu(1.0 + _f32(logits_fake))))


def hinge_g_loss(logits_fake: jax.Array) -> jax.Array:
  """-mean D(G(z))."""
  return -jnp.mean(_f32(logits_fake))


def non_saturating_d_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  """0.5 * (mean softplus(-D(x)) + mean softplus(D(G(z)))): binary cross-entropy with real=1,
  fake=0, halved as taming's "vanilla" loss (LlamaGen's "non-saturating" D loss swaps the
  arguments of its BCE call; this is the intended loss)."""
  return 0.5 * (jnp.mean(jax.nn.softplus(-_f32(logits_real)))
                + jnp.mean(jax.nn.softplus(_f32(logits_fake))))


def non_saturating_g_loss(logits_fake: jax.Array) -> jax.Array:
  """mean softplus(-D(G(z))) = BCE of fake logits against the label 1."""
  return jnp.mean(jax.nn.softplus(-_f32(logits_fake)))


def discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array,
                       kind: GanLossKind = "hinge") -> jax.Array:
  """The discriminator's loss of the named kind ("hinge" or "non_saturating"), f32 scalar."""
  if kind == "hinge":
    return hinge_d_loss(logits_real, logits_fake)
  if kind == "non_saturating":
    return non_saturating_d_loss(logits_real, logits_fake)
  raise ValueError(f"GAN loss kind must be 'hinge' or 'non_saturating'; got {kind!r}")


def generator_loss(logits_fake: jax.Array, kind: GanLossKind = "hinge") -> jax.Array:
  """The generator's adversarial loss of the named kind, f32 scalar."""
  if kind == "hinge":
    return hinge_g_loss(logits_fake)
  if kind == "non_saturating":
    return non_saturating_g_loss(logits_fake)
  raise ValueError(f"GAN loss kind must be 'hinge' or 'non_saturating'; got {kind!r}")


def _global_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(_f32(g))) for g in jax.tree.leaves(tree)))


def adaptive_weight(nll_grads: Any, gan_grads: Any, *, eps: float = 1e-4,
                    max_weight: float = 1e4) -> jax.Array:
  """taming's adaptive GAN weight: ||∇nll|| / (||∇gan|| + eps), clipped to [0, max_weight].

  Args:
    nll_grads: gradient of the non-adversarial loss w.r.t. the generator's last layer (an
      array, or a pytree whose global norm is taken).
    gan_grads: gradient of the generator's adversarial loss w.r.t. the same layer.

  Returns:
    f32 scalar with stopped gradient. Multiply it by `gan_weight_schedule(...)` (taming's
    disc_weight * adopt_weight) before scaling the adversarial term. `loss_part_grads` gives
    both gradients.
  """
  weight = _global_norm(nll_grads) / (_global_norm(gan_grads) + eps)
  return jax.lax.stop_gradient(jnp.clip(weight, 0.0, max_weight))


def loss_part_grads(parts_fn: Callable[..., Any], params: Any, *, has_aux: bool = False):
  """Values and gradients of the two loss parts (nll, gan) of `parts_fn(params)`.

  One forward pass and two backward passes (one per part): both gradients are needed whole
  anyway, since the generator's gradient is nll_grads + w * gan_grads with w computed from
  their last-layer slices.

  Args:
    parts_fn: params -> (nll, gan) scalars, or ((nll, gan), aux) with has_aux=True.
    params: the generator's parameters (any pytree).

  Returns:
    ((nll, gan), (nll_grads, gan_grads)), plus aux as a third element with has_aux=True.

  One generator step with the adaptive weight (taming's `calculate_adaptive_weight`), where
  `parts(g_params)` returns (nll, gan) from one forward pass:

    (nll, gan), (nll_g, gan_g) = loss_part_grads(parts, g_params)
    last = lambda g: g["params"]["decoder"]["conv_out"]["kernel"]   # the decoder's last layer
    w = adaptive_weight(last(nll_g), last(gan_g)) * gan_weight_schedule(step, start, weight)
    g_grads = jax.tree.map(lambda a, b: a + w * b, nll_g, gan_g)

  Terms that do not reach the last layer (the quantizer loss) may sit in nll: their gradient
  there is 0, as in taming, where they are added after the weight is computed.
  """
  if has_aux:
    (nll, gan), vjp_fn, aux = jax.vjp(parts_fn, params, has_aux=True)
  else:
    (nll, gan), vjp_fn = jax.vjp(parts_fn, params)
  (nll_grads,) = vjp_fn((jnp.ones_like(nll), jnp.zeros_like(gan)))
  (gan_grads,) = vjp_fn((jnp.zeros_like(nll), jnp.ones_like(gan)))
  out = ((nll, gan), (nll_grads, gan_grads))
  return out + (aux,) if has_aux else out


def gan_weight_schedule(step: jax.Array | int, start: int, weight: float) -> jax.Array:
  """0 before `start`, `weight` from step `start` on (taming's adopt_weight); f32 scalar.

  Works on a traced step inside jit. Use it for both the generator's adversarial term and the
  discriminator loss, as taming does, so neither trains before the start step.
  """
  return jnp.where(jnp.asarray(step) >= start, jnp.float32(weight), jnp.float32(0.0))


class LeCamEMA(NamedTuple):
  """EMAs of the discriminator's mean logit on real and fake images: LeCam's anchors.

  Carry it as explicit training state (checkpoint it with the discriminator).
  """

  real: jax.Array  # f32 scalar
  fake: jax.Array  # f32 scalar


def lecam_init() -> LeCamEMA:
  """Both EMAs start at 0 (as MAGVIT's trainer)."""
  return LeCamEMA(real=jnp.zeros((), jnp.float32), fake=jnp.zeros((), jnp.float32))


def lecam_loss(logits_real: jax.Array, logits_fake: jax.Array, ema: LeCamEMA) -> jax.Array:
  """LeCam regulariser for the discriminator (Tseng et al. 2021, official code's form):

    mean relu(D(x) - ema.fake)^2 + mean relu(ema.real - D(G(z)))^2

  over every logit; the EMAs are constants (stopped gradient). Add `lecam_weight *` this to
  the discriminator loss. MAGVIT applies it to the batch-mean logits instead: pass
  `logits.mean()` to get that variant.
  """
  ema_real, ema_fake = (jax.lax.stop_gradient(_f32(v)) for v in ema)
  return (jnp.mean(jnp.square(jax.nn.relu(_f32(logits_real) - ema_fake)))
          + jnp.mean(jnp.square(jax.nn.relu(ema_real - _f32(logits_fake)))))


def lecam_update(ema: LeCamEMA, logits_real: jax.Array, logits_fake: jax.Array, *,
                 decay: float = 0.99) -> LeCamEMA:
  """ema <- decay * ema + (1 - decay) * mean logit, for real and fake (no gradient)."""
  def step(old, logits):
    mean = jax.lax.stop_gradient(jnp.mean(_f32(logits)))
    return decay * _f32(old) + (1.0 - decay) * mean
  return LeCamEMA(real=step(ema.real, logits_real), fake=step(ema.fake, logits_fake))
