"""Optimizer, learning-rate schedules, EMA and global norms (train/optim.py); state keys."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtok.train import optim, state


def test_warmup_cosine_schedule():
  sched = optim.learning_rate_schedule(lr=1.0, warmup_steps=10, total_steps=110,
                                       end_factor=0.1)
  np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(60), sched(110)],
                             [0.0, 0.5, 1.0, 0.55, 0.1], atol=1e-6)


def test_constant_schedule_with_and_without_warmup():
  warm = optim.learning_rate_schedule(lr=2.0, warmup_steps=4, total_steps=100,
                                      schedule="constant")
  np.testing.assert_allclose([warm(0), warm(2), warm(4), warm(99)], [0.0, 1.0, 2.0, 2.0])
  flat = optim.learning_rate_schedule(lr=2.0, warmup_steps=0, total_steps=100,
                                      schedule="constant")
  assert flat(0) == 2.0
  with pytest.raises(ValueError, match="schedule must be 'cosine' or 'constant'; got 'linear'"):
    optim.learning_rate_schedule(lr=1.0, warmup_steps=0, total_steps=10, schedule="linear")


def test_optimizer_clips_and_keeps_one_layout():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones((2,))}
  tx, _ = optim.make_optimizer(lr=1.0, warmup_steps=0, total_steps=10, schedule="constant",
                               grad_clip_norm=1.0, weight_decay=0.5)
  no_clip, _ = optim.make_optimizer(lr=1.0, warmup_steps=0, total_steps=10,
                                    schedule="constant", grad_clip_norm=0.0)
  assert (jax.tree.structure(tx.init(params)) == jax.tree.structure(no_clip.init(params)))
  grads = {"w": jnp.full((2, 2), 100.0), "b": jnp.full((2,), 100.0)}
  clip_state = tx.init(params)
  clipped, _ = tx.update(grads, clip_state, params)
  # Adam's first step is lr * g / |g| regardless of scale; weight decay hits only the kernel.
  np.testing.assert_allclose(clipped["b"], -1.0, rtol=1e-5)
  np.testing.assert_allclose(clipped["w"], -1.5, rtol=1e-5)
  np.testing.assert_allclose(optim.global_norm(grads), np.sqrt(6) * 100, rtol=1e-6)
  assert isinstance(tx, optax.GradientTransformation)


def test_ema_update_and_keys():
  ema = optim.ema_update({"a": jnp.zeros(3)}, {"a": jnp.ones(3)}, 0.9)
  np.testing.assert_allclose(ema["a"], 0.1, rtol=1e-6)
  key = state.make_key(0)
  data = jax.random.key_data(key)
  assert data.dtype == jnp.uint32
  np.testing.assert_array_equal(jax.random.key_data(state.wrap_key(data)), data)
