"""What the token-generator trainers share: the state, its init, the supervised step around
a trainer's loss, and the data (token shards from `jaxtok tokenize`, with or without labels).

A trainer (ar_trainer, maskgit_trainer) supplies only its loss:
`loss_fn(model, params, batch {"tokens", "label"}, key) -> (loss, metrics)`.
"""

from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import optax

from jaxtok import build
from jaxtok.data import tokens as token_data
from jaxtok.train import guards, loop, optim
from jaxtok.train.state import GeneratorState, wrap_key, zero

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def cross_entropy(logits_BTK: jax.Array, tokens_BT: jax.Array,
                  weights_BT: jax.Array | None = None, label_smoothing: float = 0.0
                  ) -> tuple[jax.Array, jax.Array]:
  """Mean cross-entropy (f32 log-softmax) and accuracy of logits [..., K] against ids [...],
  over the positions where `weights` is 1 (default: all); optional label smoothing."""
  logp = jax.nn.log_softmax(logits_BTK.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens_BT[..., None], axis=-1)[..., 0]
  if label_smoothing > 0:
    nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(logp, axis=-1)
  hits = (jnp.argmax(logits_BTK, axis=-1) == tokens_BT).astype(jnp.float32)
  if weights_BT is None:
    return jnp.mean(nll), jnp.mean(hits)
  weights_BT = weights_BT.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(weights_BT), 1.0)
  return jnp.sum(weights_BT * nll) / count, jnp.sum(weights_BT * hits) / count


def init_state(model, tx: optax.GradientTransformation, key: jax.Array) -> GeneratorState:
  """A fresh state (parameters still in their nn.Partitioned boxes, for sharding)."""
  k_model, k_train = jax.random.split(key)
  if hasattr(model, "example_inputs"):  # VAR reads continuous next-scale inputs
    inputs = model.example_inputs(1)
  else:
    inputs = jnp.zeros((1, *model.token_shape), jnp.int32)
  params = model.init({"params": k_model, "dropout": k_model}, inputs)["params"]
  return GeneratorState(
      step=zero(), rng=jax.random.key_data(k_train), params=params,
      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params), skipped=zero(),
      skipped_in_a_row=zero())


def make_train_step(model, loss_fn: LossFn, tx: optax.GradientTransformation,
                    lr: optax.Schedule, ema_decay: float):
  """(state, batch {"tokens", "label"}) -> (state, metrics): one AdamW step on `loss_fn`, the
  EMA, and the non-finite guard; jit it with donation."""

  def step_fn(state: GeneratorState, batch):
    next_key, loss_key = jax.random.split(wrap_key(state.rng))
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(model, p, batch, loss_key), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, rng=jax.random.key_data(next_key), params=params,
                        opt_state=opt_state,
                        ema_params=optim.ema_update(state.ema_params, params, ema_decay))
    ok = guards.all_finite((loss, grads))
    new = guards.guard_step(ok, new, state)
    return new, {"loss": loss, **metrics, "grad_norm": optim.global_norm(grads),
                 "lr": lr(state.step), "skipped": 1 - ok.astype(jnp.int32),
                 "skipped_total": new.skipped, "skipped_in_a_row": new.skipped_in_a_row}

  return step_fn


def build_parts(config):
  """(model, optimizer, lr schedule) from the config."""
  model = build.generator(config.model, config.train.compute_dtype)
  tx, lr = optim.from_config(config.optimizer, config.train.steps)
  return model, tx, lr


def train_iterator(config, model):
  """This process's checkpointable iterator of {"tokens", "label"} batches of `data.path`,
  shuffled anew each epoch and repeated forever."""
  source = token_data.labelled_tokens(
      config.data.path, config.data.labels, token_shape=model.token_shape,
      codebook_size=model.codebook_size, num_classes=model.num_classes)
  ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat()
  ds = ds[jax.process_index()::jax.process_count()]
  return iter(ds.to_iter_dataset().batch(config.train.batch_size // jax.process_count()))


def train(config, workdir: str, loss_fn: LossFn, *, stop_after: int | None = None
          ) -> dict[str, Any]:
  """Trains (or resumes) the generator `config` describes on `loss_fn`; see `loop.run`.
  Returns {"step", "stopped_by", "loss", "accuracy"} (the last logged values)."""
  mesh = loop.make_mesh(config)
  model, tx, lr = build_parts(config)
  return loop.run(
      config, workdir, mesh=mesh, init=lambda k: init_state(model, tx, k),
      step=make_train_step(model, loss_fn, tx, lr, config.train.ema_decay),
      batches=train_iterator(config, model), report=("loss", "accuracy"),
      throughput=("tokens_per_sec", config.train.batch_size * model.num_tokens),
      stop_after=stop_after)
