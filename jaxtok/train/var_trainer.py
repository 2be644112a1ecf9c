"""Trains a VAR (models/generators/var.py) as VAR does: teacher forcing over all scales in one
pass (each scale predicted from f̂ of the scales before it), cross-entropy with label
smoothing (VAR: 0.1) averaged over all L tokens, class dropout for classifier-free guidance
and stochastic depth (both in the model, under train=True).

Data: the token shards `jaxtok tokenize` writes with a VAR VQVAE (flat multi-scale ids
[B, L]), labels as the AR trainer's. The teacher-forcing inputs need that tokenizer's
quantizer (codebook and Phi convs, frozen): `data.tokenizer` names its export, which must be
the tokenizer that made the shards (their metadata's tokenizer config).
"""

from typing import Any

from jaxtok import inference
from jaxtok.data import tokens as token_data
from jaxtok.quantizers.multiscale import scale_bounds
from jaxtok.train import generator, loop


def frozen_quantizer(config, model):
  """(quantizer, its variables) of the tokenizer export `config.data.tokenizer`, checked
  against the model and the token shards."""
  path = str(config.data.get("tokenizer") or "")
  if not path:
    raise ValueError("data.tokenizer must name the export of the VAR VQVAE that made the "
                     "tokens (its quantizer makes VAR's teacher-forcing inputs); got ''")
  tok = inference.load(path)
  quantizer = tok.model.quantizer
  if tuple(getattr(quantizer, "patch_nums", ())) != tuple(model.patch_nums):
    raise ValueError(f"data.tokenizer={path!r} must be a multi-scale VQVAE with the model's "
                     f"scales {tuple(model.patch_nums)}; its quantizer is "
                     f"{type(quantizer).__name__} {getattr(quantizer, 'patch_nums', '')}")
  if (quantizer.codebook_size, quantizer.code_dim) != (model.codebook_size, model.latent_dim):
    raise ValueError(f"data.tokenizer={path!r} has {quantizer.codebook_size} codes of dim "
                     f"{quantizer.code_dim}; model.codebook_size={model.codebook_size}, "
                     f"model.latent_dim={model.latent_dim}")
  made_by = token_data.TokenSource(config.data.path).metadata.get("tokenizer_config")
  if made_by and (inference.tokenizer_fingerprint(made_by)
                  != inference.tokenizer_fingerprint(tok.config)):
    raise ValueError(f"data.tokenizer={path!r} is not the tokenizer that made the tokens in "
                     f"data.path={config.data.path!r} (their metadata names another config)")
  return quantizer, {"params": tok.variables["params"]["quantizer"]}


def next_scale_loss(quantizer, quantizer_variables, label_smoothing: float):
  """loss_fn for generator.make_train_step: teacher-forced cross-entropy over all scales."""

  def loss_fn(model, params, batch, key):
    tokens = batch["tokens"]
    inputs = quantizer.apply(quantizer_variables, tokens, method="next_scale_inputs")
    labels = batch["label"] if model.num_classes > 0 else None
    logits = model.apply({"params": params}, inputs, labels, train=True,
                         rngs={"dropout": key})
    loss, accuracy = generator.cross_entropy(logits, tokens, label_smoothing=label_smoothing)
    begin, _ = scale_bounds(model.patch_nums)[-1]
    _, last = generator.cross_entropy(logits[:, begin:], tokens[:, begin:])
    return loss, {"accuracy": accuracy, "accuracy_last_scale": last}

  return loss_fn


def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the VAR `config` describes (configs/demo/var.py) in `workdir`.
  Returns {"step", "stopped_by", "loss", "accuracy"} (the last logged values)."""
  mesh = loop.make_mesh(config)
  model, tx, lr = generator.build_parts(config)
  quantizer, q_vars = frozen_quantizer(config, model)
  loss_fn = next_scale_loss(quantizer, q_vars, config.loss.label_smoothing)
  return loop.run(
      config, workdir, mesh=mesh, init=lambda k: generator.init_state(model, tx, k),
      step=generator.make_train_step(model, loss_fn, tx, lr, config.train.ema_decay),
      batches=generator.train_iterator(config, model), report=("loss", "accuracy"),
      throughput=("tokens_per_sec", config.train.batch_size * model.num_tokens),
      stop_after=stop_after)
