"""Trains a MaskGIT (models/generators/maskgit.py) as the MaskGIT paper does: each sample
masks a cosine-scheduled number of its tokens and the model predicts the masked ones, with
label smoothing on the cross-entropy and class dropout for classifier-free guidance.

Data and labels are the AR trainer's (token shards from `jaxtok tokenize`).
"""

from typing import Any

import jax
import jax.numpy as jnp

from jaxtok.models.generators import maskgit
from jaxtok.train import generator


def masked_token_loss(label_smoothing: float):
  """loss_fn for generator.train: cross-entropy on the masked positions only."""

  def loss_fn(model, params, batch, key):
    tokens = batch["tokens"]
    batch_size = tokens.shape[0]
    mask_key, drop_key = jax.random.split(key)
    mask_BT = maskgit.random_mask(mask_key, batch_size, model.num_tokens)
    tokens_BT = tokens.reshape(batch_size, -1)
    masked = jnp.where(mask_BT, model.mask_id, tokens_BT).reshape(tokens.shape)
    labels = batch["label"] if model.num_classes > 0 else None
    logits = model.apply({"params": params}, masked, labels, train=True,
                         rngs={"dropout": drop_key})
    logits_BTK = logits.reshape(batch_size, model.num_tokens, -1)
    loss, accuracy = generator.cross_entropy(logits_BTK, tokens_BT, mask_BT, label_smoothing)
    return loss, {"accuracy": accuracy, "mask_ratio": jnp.mean(mask_BT.astype(jnp.float32))}

  return loss_fn


def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the MaskGIT `config` describes (configs/demo/maskgit.py)."""
  return generator.train(config, workdir, masked_token_loss(config.loss.label_smoothing),
                         stop_after=stop_after)
