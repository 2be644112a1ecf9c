"""Optimizers and what trainers compute around them: schedules, AdamW, EMA, global norms."""

from typing import Any

import jax
import jax.numpy as jnp
import optax

PyTree = Any


def learning_rate_schedule(*, lr: float, warmup_steps: int, total_steps: int,
                           schedule: str = "cosine", end_factor: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay to end_factor * lr at
  `total_steps` ("cosine") or constant ("constant")."""
  if lr < 0 or warmup_steps < 0 or total_steps < 1:
    raise ValueError(f"need lr >= 0, warmup_steps >= 0, total_steps >= 1; got lr={lr}, "
                     f"warmup_steps={warmup_steps}, total_steps={total_steps}")
  if schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1), end_value=lr * end_factor)
  if schedule == "constant":
    if warmup_steps == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup_steps), optax.constant_schedule(lr)],
        [warmup_steps])
  raise ValueError(f"schedule must be 'cosine' or 'constant'; got {schedule!r}")


def _decay_mask(params: PyTree) -> PyTree:
  # Weight decay on kernels and embeddings only: norms and biases (ndim < 2) keep their scale.
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(*, lr: float, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                   end_factor: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, weight_decay: float = 0.0,
                   grad_clip_norm: float = 0.0) -> tuple[optax.GradientTransformation,
                                                         optax.Schedule]:
  """AdamW with optional global-norm clipping first, and its learning-rate schedule.

  The chain always has both links (clipping is the identity when grad_clip_norm is 0), so the
  optimizer state's layout depends on no float setting.
  """
  sched = learning_rate_schedule(lr=lr, warmup_steps=warmup_steps, total_steps=total_steps,
                                 schedule=schedule, end_factor=end_factor)
  clip = optax.clip_by_global_norm(grad_clip_norm) if grad_clip_norm > 0 else optax.identity()
  adam = optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
  return optax.chain(clip, adam), sched


def from_config(section, total_steps: int) -> tuple[optax.GradientTransformation,
                                                    optax.Schedule]:
  """make_optimizer with the fields of an `optimizer` config section."""
  return make_optimizer(total_steps=total_steps, **dict(section))


def ema_update(ema: PyTree, params: PyTree, decay: float) -> PyTree:
  """ema <- decay * ema + (1 - decay) * params, leaf by leaf in f32."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


def global_norm(tree: PyTree) -> jax.Array:
  """sqrt of the sum of squares of every leaf, in f32."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves)
                  if leaves else jnp.float32(0.0))
