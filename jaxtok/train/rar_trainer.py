"""Trains a RAR (models/generators/rar.py) as the RAR paper does: next-token cross-entropy in
a per-sample generation order that is a random permutation with a probability annealed from
1 (up to `orders.anneal_start`) to 0 (from `orders.anneal_end`), then raster order, which is
the order it samples in; class dropout teaches the null class for classifier-free guidance.

Data and labels are the AR trainer's (token shards from `jaxtok tokenize`).
"""

from typing import Any

import jax

from jaxtok.models.generators import rar
from jaxtok.train import generator, loop


def random_order_loss(anneal_start: int, anneal_end: int):
  """loss_fn for generator.make_train_step; reads the optimiser step from batch["step"]."""

  def loss_fn(model, params, batch, key):
    tokens = batch["tokens"]
    order_key, drop_key = jax.random.split(key)
    ratio = rar.random_order_ratio(batch["step"], anneal_start, anneal_end)
    orders = rar.sample_orders(order_key, tokens.shape[0], model.num_tokens, ratio)
    labels = batch["label"] if model.num_classes > 0 else None
    logits = model.apply({"params": params}, tokens, labels, orders=orders, train=True,
                         rngs={"dropout": drop_key})
    loss, accuracy = generator.cross_entropy(logits, tokens)
    return loss, {"accuracy": accuracy, "random_order_ratio": ratio}

  return loss_fn


def make_train_step(config, model, tx, lr):
  """(state, batch) -> (state, metrics): the generator step with the state's step number
  handed to the loss (the annealing schedule depends on it)."""
  inner = generator.make_train_step(
      model, random_order_loss(config.orders.anneal_start, config.orders.anneal_end), tx, lr,
      config.train.ema_decay)
  return lambda state, batch: inner(state, {**batch, "step": state.step})


def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the RAR `config` describes (configs/demo/rar.py) in `workdir`.
  Returns {"step", "stopped_by", "loss", "accuracy"} (the last logged values)."""
  mesh = loop.make_mesh(config)
  model, tx, lr = generator.build_parts(config)
  return loop.run(
      config, workdir, mesh=mesh, init=lambda k: generator.init_state(model, tx, k),
      step=make_train_step(config, model, tx, lr),
      batches=generator.train_iterator(config, model), report=("loss", "accuracy"),
      throughput=("tokens_per_sec", config.train.batch_size * model.num_tokens),
      stop_after=stop_after)
