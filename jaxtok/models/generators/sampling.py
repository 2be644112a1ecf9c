"""Sampling maths shared by the generators: temperature, top-k, top-p, classifier-free guidance.

Shape letters: B batch, K codebook size (the logits' last axis). Every function works on
logits [..., K], in f32 whatever the input dtype, and is pure (no Flax): the samplers in
ar.py and maskgit.py build their jitted loops from them.

Classifier-free guidance (Ho & Salimans 2022) runs the conditional and unconditional halves
as one batch (conditional rows first) and mixes their logits:
  guided = uncond + scale * (cond - uncond).
"""

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers.base import check_indices

CfgSchedule = Literal["constant", "linear"]


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How tokens are drawn from logits; hashable, so the jitted samplers take it as static.

  Each distinct config compiles its own sampling loop.
  """

  temperature: float = 1.0  # logits / temperature; 0 takes the argmax (greedy)
  top_k: int = 0  # keep the k largest logits (ties with the k-th kept); 0: all
  top_p: float = 1.0  # keep the smallest set of top tokens with probability >= top_p
  cfg_scale: float = 1.0  # classifier-free guidance scale; 1.0: no guidance
  cfg_schedule: CfgSchedule = "constant"  # "linear": ramps 1 -> cfg_scale over the steps

  def __post_init__(self):
    if not (np.isfinite(self.temperature) and self.temperature >= 0):
      raise ValueError(f"temperature must be a finite number >= 0; got {self.temperature}")
    if int(self.top_k) != self.top_k or self.top_k < 0:
      raise ValueError(f"top_k must be an integer >= 0 (0 disables it); got {self.top_k}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must lie in (0, 1] (1 disables it); got {self.top_p}")
    if not np.isfinite(self.cfg_scale):
      raise ValueError(f"cfg_scale must be a finite number; got {self.cfg_scale}")
    if self.cfg_schedule not in ("constant", "linear"):
      raise ValueError(
          f"cfg_schedule must be 'constant' or 'linear'; got {self.cfg_schedule!r}")

  @property
  def guidance(self) -> bool:
    """Whether the unconditional half is run at all."""
    return self.cfg_scale != 1.0


def top_k_logits(logits: jax.Array, k: int) -> jax.Array:
  """Sets every logit below the k-th largest (per row) to -inf; k = 0 or k >= K keeps all."""
  logits = jnp.asarray(logits, jnp.float32)
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth_largest = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth_largest, -jnp.inf, logits)


def top_p_logits(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filtering (Holtzman et al. 2020): keeps the fewest highest-probability tokens
  whose total probability reaches p (always at least the most likely one); others -> -inf.

  A token is dropped when the tokens strictly ahead of it in the sorted order already hold
  probability >= p. p >= 1 keeps everything.
  """
  logits = jnp.asarray(logits, jnp.float32)
  if p >= 1.0:
    return logits
  order = jnp.argsort(-logits, axis=-1)  # stable: equal logits keep index order
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_ahead = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  inverse = jnp.argsort(order, axis=-1)  # back from sorted order to vocabulary order
  drop = jnp.take_along_axis(mass_ahead >= p, inverse, axis=-1)
  return jnp.where(drop, -jnp.inf, logits)


def cfg_logits(cond: jax.Array, uncond: jax.Array, scale) -> jax.Array:
  """Classifier-free guidance: uncond + scale * (cond - uncond), in f32."""
  cond, uncond = jnp.asarray(cond, jnp.float32), jnp.asarray(uncond, jnp.float32)
  return uncond + scale * (cond - uncond)


def cfg_scale_at(step, num_steps: int, scale: float, schedule: CfgSchedule = "constant"):
  """The guidance scale at `step` of `num_steps` (0-based).

  "constant": `scale` throughout. "linear": 1 + (scale - 1) * (step + 1) / num_steps, a
  ramp from weak guidance at the first step to `scale` at the last (as in Muse-style
  samplers: early tokens set the layout, guidance matters most for the later ones).
  """
  if schedule == "constant":
    return jnp.float32(scale)
  if schedule == "linear":
    return 1.0 + (scale - 1.0) * (jnp.asarray(step, jnp.float32) + 1.0) / num_steps
  raise ValueError(f"cfg_schedule must be 'constant' or 'linear'; got {schedule!r}")


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """Temperature, then top-k, then top-p, in f32 (temperature 0 leaves the logits as they
  are: `sample_logits` takes the argmax then)."""
  logits = jnp.asarray(logits, jnp.float32)
  if config.temperature > 0:
    logits = logits / config.temperature
  return top_p_logits(top_k_logits(logits, config.top_k), config.top_p)


def sample_logits(rng: jax.Array, logits: jax.Array, config: SamplingConfig) -> jax.Array:
  """Draws int32 ids [...] from logits [..., K] (argmax when config.temperature == 0)."""
  logits = filter_logits(logits, config)
  if config.temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def guided_logits(logits_2BK: jax.Array, step, num_steps: int,
                  config: SamplingConfig) -> jax.Array:
  """Logits of a [cond; uncond] batch [2B, ..., K] -> guided [B, ..., K] (f32); without
  guidance the input is returned as f32."""
  logits_2BK = jnp.asarray(logits_2BK, jnp.float32)
  if not config.guidance:
    return logits_2BK
  cond, uncond = jnp.split(logits_2BK, 2, axis=0)
  return cfg_logits(cond, uncond,
                    cfg_scale_at(step, num_steps, config.cfg_scale, config.cfg_schedule))


# -- input checks shared by the generators ---------------------------------------------------

def as_key(rng) -> jax.Array:
  """A PRNG key from a key or an integer seed."""
  if isinstance(rng, (int, np.integer)):
    return jax.random.key(int(rng))
  if not isinstance(rng, jax.Array):
    raise TypeError(f"rng must be a jax PRNG key or an integer seed; got {type(rng).__name__}")
  return rng


def check_labels(labels, num_classes: int, *, name: str = "labels") -> None:
  """Class ids must be an integer [B] array in [0, num_classes) (range checked if concrete)."""
  shape = tuple(np.shape(labels))
  dtype = labels.dtype if hasattr(labels, "dtype") else np.asarray(labels).dtype
  if len(shape) != 1:
    raise ValueError(f"{name} must be a 1-D array of class ids [B]; got shape {shape}")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must be integer class ids; got dtype {dtype}")
  if num_classes <= 0:
    raise ValueError(
        f"this model is unconditional (num_classes=0): pass {name}=None; got shape {shape}")
  check_indices(labels, num_classes, name=name)  # range, on concrete arrays


def check_token_grid(tokens, token_shape: tuple[int, ...], num_ids: int, *,
                     name: str = "tokens") -> None:
  """Token ids must be integer [B, *token_shape] in [0, num_ids) (range checked if concrete)."""
  shape = tuple(np.shape(tokens))
  dtype = tokens.dtype if hasattr(tokens, "dtype") else np.asarray(tokens).dtype
  if shape[1:] != tuple(token_shape) or len(shape) != 1 + len(token_shape):
    expected = "[B, " + ", ".join(str(s) for s in token_shape) + "]"
    raise ValueError(
        f"{name} must have shape {expected} (this model's token_shape); got {shape}")
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(f"{name} must be integer token ids; got dtype {dtype}")
  check_indices(tokens, num_ids, name=name)  # range, on concrete arrays


def resolve_batch(labels, num_samples: int | None, num_classes: int, config: SamplingConfig,
                  ) -> int:
  """The batch size of a sampling call; checks labels / num_samples / guidance agree."""
  if labels is None:
    if num_samples is None or int(num_samples) < 1:
      raise ValueError(
          f"without labels, num_samples must be a positive integer; got {num_samples}")
    if config.guidance:
      raise ValueError(
          f"classifier-free guidance (cfg_scale={config.cfg_scale}) needs labels to guide "
          "towards; pass labels, or cfg_scale=1.0 for unconditional samples")
    return int(num_samples)
  check_labels(labels, num_classes)
  batch = int(np.shape(labels)[0])
  if num_samples is not None and int(num_samples) != batch:
    raise ValueError(
        f"num_samples={num_samples} disagrees with labels of shape {np.shape(labels)}: pass "
        "one label per sample (or leave num_samples=None)")
  return batch
