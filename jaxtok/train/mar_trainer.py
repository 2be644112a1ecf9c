"""Trains a MAR (models/generators/mar.py) as the MAR paper does: each batch masks a
truncated-normal fraction (>= loss.mask_ratio_min) of every sample's tokens in a random
order, the transformers condition the diffusion head on the visible ones, and the head's
diffusion loss (losses/diffusion.py: noise MSE + the variance bound, 1000 cosine steps) is
averaged over the masked tokens, each repeated loss.diffusion_batch_mul times with other
noise; class dropout teaches the null class for classifier-free guidance.

Data: latent shards (float16 / float32 records [h, w, C], see data/tokens.py), labels as the
AR trainer's.
"""

from typing import Any

import grain
import jax
import jax.numpy as jnp

from jaxtok.data import tokens as token_data
from jaxtok.losses import diffusion as diffusion_loss
from jaxtok.models.generators import diffusion, mar
from jaxtok.train import generator, loop
from jaxtok.train.state import GeneratorState, zero


def init_state(model, tx, key: jax.Array) -> GeneratorState:
  """A fresh state (parameters still boxed, for sharding), initialised on zero latents."""
  k_model, k_train = jax.random.split(key)
  params = model.init({"params": k_model, "dropout": k_model}, model.example_inputs(1))["params"]
  return GeneratorState(
      step=zero(), rng=jax.random.key_data(k_train), params=params,
      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params), skipped=zero(),
      skipped_in_a_row=zero())


def masked_diffusion_loss(mask_ratio_min: float, batch_mul: int):
  """loss_fn for generator.make_train_step: MAR's diffusion loss on the masked tokens."""
  schedule = diffusion.make_schedule(1000)

  def loss_fn(model, params, batch, key):
    # The model's latents are the tokenizer's times latent_scale (MAR: x = posterior * 0.2325).
    tokens = batch["tokens"].astype(jnp.float32) * jnp.float32(model.latent_scale)
    batch_size, channels = tokens.shape[0], tokens.shape[-1]
    mask_key, drop_key, noise_key = jax.random.split(key, 3)
    mask_BT = mar.random_mask(mask_key, batch_size, model.num_tokens, mask_ratio_min)
    labels = batch["label"] if model.num_classes > 0 else None
    variables = {"params": params}
    z_BTE = model.apply(variables, tokens, labels, mask=mask_BT, train=True,
                        rngs={"dropout": drop_key})
    z_NE = jnp.tile(z_BTE.reshape(-1, z_BTE.shape[-1]), (batch_mul, 1))
    x0_NC = jnp.tile(tokens.reshape(-1, channels), (batch_mul, 1))
    weights_N = jnp.tile(mask_BT.reshape(-1), batch_mul)
    predict = lambda x, t: model.apply(variables, x, t, z_NE, method=mar.MAR.denoise)  # noqa: E731
    loss, parts = diffusion_loss.diffusion_loss(predict, schedule, x0_NC, noise_key, weights_N)
    return loss, {**parts, "mask_ratio": jnp.mean(mask_BT.astype(jnp.float32))}

  return loss_fn


def train_iterator(config, model):
  """This process's checkpointable iterator of {"tokens" (f32 latents), "label"} batches."""
  source = token_data.labelled_latents(
      config.data.path, config.data.labels, token_shape=model.token_shape,
      token_dim=model.token_dim, num_classes=model.num_classes)
  ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat()
  ds = ds[jax.process_index()::jax.process_count()]
  return iter(ds.to_iter_dataset().batch(config.train.batch_size // jax.process_count()))


def make_train_step(config, model, tx, lr):
  """(state, batch) -> (state, metrics): one step of the masked diffusion loss."""
  return generator.make_train_step(
      model, masked_diffusion_loss(config.loss.mask_ratio_min, config.loss.diffusion_batch_mul),
      tx, lr, config.train.ema_decay)


def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the MAR `config` describes (configs/demo/mar.py) in `workdir`.
  Returns {"step", "stopped_by", "loss", "mse"} (the last logged values)."""
  mesh = loop.make_mesh(config)
  model, tx, lr = generator.build_parts(config)
  return loop.run(
      config, workdir, mesh=mesh, init=lambda k: init_state(model, tx, k),
      step=make_train_step(config, model, tx, lr), batches=train_iterator(config, model),
      report=("loss", "mse"),
      throughput=("tokens_per_sec", config.train.batch_size * model.num_tokens),
      stop_after=stop_after)
