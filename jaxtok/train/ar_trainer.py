"""Trains an autoregressive token generator (LlamaGen's GPT, models/generators/ar.py) with
next-token cross-entropy on the token shards `jaxtok tokenize` writes; `train(config, workdir)`.

`data.labels = "none"` trains an unconditional model (model.num_classes = 0: every sample gets
the null class token); `"metadata"` reads one class id per record from the token directory's
metadata.json, and condition dropout teaches the null class for classifier-free guidance.
"""

from typing import Any

from jaxtok.train import generator


def next_token_loss(model, params, batch, key):
  """Teacher-forced next-token cross-entropy of GPT on the batch's token grids."""
  tokens = batch["tokens"]
  labels = batch["label"] if model.num_classes > 0 else None
  logits = model.apply({"params": params}, tokens, labels, train=True, rngs={"dropout": key})
  loss, accuracy = generator.cross_entropy(logits, tokens)
  return loss, {"accuracy": accuracy}


def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the GPT `config` describes (configs/demo/generator.py) in `workdir`."""
  return generator.train(config, workdir, next_token_loss, stop_after=stop_after)
