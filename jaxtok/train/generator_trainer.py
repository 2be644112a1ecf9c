"""Trains an autoregressive token generator (LlamaGen's GPT, jaxtok.models.generators.ar) on the
token shards `jaxtok tokenize` writes, with next-token cross-entropy; `train(config, workdir)`.

The flow is the tokenizer trainer's: build the model from the config -> abstract state via
`jax.eval_shape` -> its shardings on the mesh -> jit init with those out_shardings, or restore
the newest checkpoint of `workdir` (state and Grain position) -> the loop. Each step is one
jitted, state-donating call: teacher-forced logits, f32 log-softmax cross-entropy, AdamW, EMA.

Class labels: `data.labels = "none"` trains an unconditional model (model.num_classes = 0:
every sample gets the null class token); `"metadata"` reads one int class id per record from
the token directory's metadata.json `"labels"` list (num_classes > 0; condition dropout then
teaches the null class for classifier-free guidance).

Outputs in `workdir`: checkpoints/ (state, Grain iterator, config), metrics.jsonl, tensorboard/.
`load_generator` reads a workdir or a `jaxtok export` of one; `sample_images` draws samples and
decodes them with a tokenizer (`jaxtok sample`).
"""

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from jaxtok.data import tokens as token_data
from jaxtok.models.generators import ar
from jaxtok.train import checkpoint, guards, sharding
from jaxtok.train import metrics as metric_io
from jaxtok.train import state as state_lib

log = logging.getLogger(__name__)
PyTree = Any


class GeneratorState(flax.struct.PyTreeNode):
  """Everything that changes during generator training (a pytree of arrays only)."""

  step: jax.Array  # int32 scalar: completed steps, skipped ones included
  rng: jax.Array  # uint32 raw rbg key data; split once per step
  params: PyTree  # GPT "params"
  ema_params: PyTree  # exponential moving average of `params`
  opt_state: PyTree
  skipped: jax.Array  # int32: steps skipped for a non-finite loss or gradient, in total
  skipped_in_a_row: jax.Array  # int32: consecutive skipped steps ending at `step`


def build_model(model_config, dtype=jnp.float32) -> ar.GPT:
  """`model.name` must be "generators.ar"; the other entries are GPT fields."""
  fields = state_lib.plain(model_config)
  name = fields.pop("name")
  if name != "generators.ar":
    raise ValueError(f"the generator trainer trains model.name='generators.ar'; got {name!r}")
  known = {f.name for f in dataclasses.fields(ar.GPT) if f.name not in ("parent", "name")}
  for key in fields:
    if key not in known:
      raise ValueError(f"model.{key} is not a field of GPT; fields: {sorted(known)}")
  return ar.GPT(**{**fields, "dtype": dtype})


def cross_entropy(logits_BTK: jax.Array, tokens_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean next-token cross-entropy (f32 log-softmax) and accuracy of logits [..., K]."""
  logp = jax.nn.log_softmax(logits_BTK.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens_BT[..., None], axis=-1)[..., 0]
  accuracy = jnp.mean((jnp.argmax(logits_BTK, axis=-1) == tokens_BT).astype(jnp.float32))
  return jnp.mean(nll), accuracy


# ------------------------------------------------------------------ data

class LabelledTokens:
  """Records {"tokens": int32 grid, "label": int32} of a TokenSource (label 0 if unlabelled)."""

  def __init__(self, source: token_data.TokenSource, labels: np.ndarray | None):
    self.source, self.labels = source, labels

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    label = 0 if self.labels is None else self.labels[index]
    return {"tokens": self.source[index], "label": np.int32(label)}


def make_source(config) -> LabelledTokens:
  """The token directory `data.path`, checked against the model config."""
  source = token_data.TokenSource(config.data.path)
  model = config.model
  if (tuple(source.token_shape) != tuple(model.token_shape)
      or source.codebook_size != model.codebook_size):
    raise ValueError(
        f"data.path={config.data.path!r} holds tokens {tuple(source.token_shape)} of "
        f"{source.codebook_size} codes; the model is configured for model.token_shape="
        f"{tuple(model.token_shape)}, model.codebook_size={model.codebook_size}")
  if config.data.labels == "none":
    if model.num_classes != 0:
      raise ValueError(f"data.labels='none' trains an unconditional model: set "
                       f"model.num_classes=0; got {model.num_classes}")
    return LabelledTokens(source, None)
  if config.data.labels == "metadata":
    labels = np.asarray(source.metadata.get("labels", []), np.int32)
    if labels.shape != (len(source),) or model.num_classes < 1:
      raise ValueError(f"data.labels='metadata' needs model.num_classes >= 1 (got "
                       f"{model.num_classes}) and a 'labels' list of {len(source)} class ids in "
                       f"{config.data.path}/metadata.json (found {labels.shape[0]})")
    if labels.min() < 0 or labels.max() >= model.num_classes:
      raise ValueError(f"metadata labels must lie in [0, {model.num_classes}); got "
                       f"[{labels.min()}, {labels.max()}]")
    return LabelledTokens(source, labels)
  raise ValueError(f"data.labels must be 'none' or 'metadata'; got {config.data.labels!r}")


def train_iterator(config, source: LabelledTokens):
  """This process's checkpointable iterator of {"tokens", "label"} batches, shuffled anew each
  epoch and repeated forever."""
  ds = grain.MapDataset.source(source).seed(config.seed).shuffle().repeat()
  ds = ds[jax.process_index()::jax.process_count()]
  return iter(ds.to_iter_dataset().batch(config.train.batch_size // jax.process_count()))


# ------------------------------------------------------------------ state and step

def init_state(model: ar.GPT, tx: optax.GradientTransformation, key) -> GeneratorState:
  """A fresh state (parameters still in their nn.Partitioned boxes, for sharding)."""
  k_model, k_train = jax.random.split(key)
  tokens = jnp.zeros((1, *model.token_shape), jnp.int32)
  params = model.init({"params": k_model, "dropout": k_model}, tokens)["params"]
  return GeneratorState(
      step=jnp.zeros((), jnp.int32), rng=jax.random.key_data(k_train), params=params,
      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
      skipped=jnp.zeros((), jnp.int32), skipped_in_a_row=jnp.zeros((), jnp.int32))


def make_train_step(model: ar.GPT, tx, lr: optax.Schedule, ema_decay: float):
  """(state, batch {"tokens", "label"}) -> (state, metrics); jit it with donation."""
  conditional = model.num_classes > 0

  def step_fn(state: GeneratorState, batch):
    next_key, drop_key = jax.random.split(state_lib.wrap_key(state.rng))
    tokens = batch["tokens"]
    labels = batch["label"] if conditional else None

    def loss_fn(params):
      logits = model.apply({"params": params}, tokens, labels, train=True,
                           rngs={"dropout": drop_key})
      return cross_entropy(logits, tokens)

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, rng=jax.random.key_data(next_key), params=params,
                        opt_state=opt_state,
                        ema_params=state_lib.ema_update(state.ema_params, params, ema_decay))
    ok = guards.all_finite((loss, grads))
    new = guards.guard_step(ok, new, state)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": state_lib.global_norm(grads),
               "lr": lr(state.step), "skipped": 1 - ok.astype(jnp.int32),
               "skipped_total": new.skipped, "skipped_in_a_row": new.skipped_in_a_row}
    return new, metrics

  return step_fn


def layout(model: ar.GPT, tx, config, mesh):
  """Shapes via eval_shape -> shardings; returns (init key, shardings, abstract state)."""
  key = state_lib.make_key(config.seed)
  boxed = jax.eval_shape(lambda k: init_state(model, tx, k), key)
  shardings = sharding.state_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return key, shardings, abstract


def build(config):
  """(model, optimizer, lr schedule) from the config."""
  model = build_model(config.model, state_lib.DTYPES[config.train.compute_dtype])
  optimizer = state_lib.plain(config.optimizer)
  tx, lr = state_lib.make_optimizer(total_steps=config.train.steps, **optimizer)
  return model, tx, lr


def jit_train_step(model, tx, lr, config, mesh, shardings):
  """The train step jitted for `mesh`: state donated, batch split over data x fsdp."""
  return jax.jit(make_train_step(model, tx, lr, config.train.ema_decay), donate_argnums=(0,),
                 in_shardings=(shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(shardings, sharding.replicated(mesh)))


# ------------------------------------------------------------------ the entry point

def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes, from the newest checkpoint in `workdir`) until `train.steps`.

  Args:
    config: a ConfigDict as configs/demo/generator.py builds (trainer = "generator").
    workdir: where checkpoints and metrics go; an existing run there resumes.
    stop_after: stop (with a checkpoint) once this step is reached.

  Returns:
    {"step", "stopped_by", "loss", "accuracy"} (the last logged values).
  Raises:
    guards.NonFiniteError: `train.max_skips_in_a_row` consecutive non-finite steps.
    checkpoint.CheckpointMismatchError: the workdir's checkpoint does not fit this config.
  """
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh.shape)
  sharding.check_batch_size(config.train.batch_size, mesh, name="train.batch_size")
  model, tx, lr = build(config)
  source = make_source(config)
  data_iter = train_iterator(config, source)

  key, shardings, abstract = layout(model, tx, config, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.checkpoint.max_to_keep,
                                 async_save=config.checkpoint.async_save)
  start = ckpt.latest_step()
  if start is None:
    init = jax.jit(lambda k: nn.meta.unbox(init_state(model, tx, k)), out_shardings=shardings)
    state, start = init(key), 0
  else:
    state = ckpt.restore(start, abstract, data_iterator=data_iter, config=config)
  train_step = jit_train_step(model, tx, lr, config, mesh, shardings)

  total = config.train.steps
  end = total if stop_after is None else min(total, stop_after)
  tokens_per_batch = config.train.batch_size * model.num_tokens
  writer = metric_io.MetricWriter(workdir, total_steps=total, initial_step=start,
                                  enabled=jax.process_index() == 0)
  monitor = guards.SkipMonitor(config.train.max_skips_in_a_row, int(state.skipped))
  result, step, stop = {}, start, None
  try:
    with guards.StopSignal() as stop:
      resumed = f"resumed from step {start} of {ckpt.directory}" if start else "started"
      writer.print(f"training: {resumed}; running to step {end} of {total}")
      pending, t_log, step_log = None, time.time(), start
      while step < end:
        batch = sharding.global_batch(next(data_iter), mesh)
        state, step_metrics = train_step(state, batch)
        step += 1
        writer.advance()
        if pending is not None:  # read one step late: the device runs ahead meanwhile
          monitor.update(pending[0], *jax.device_get(pending[1]))
        pending = (step, (step_metrics["skipped_total"], step_metrics["skipped_in_a_row"]))
        if step % config.train.log_every == 0 or step == end:
          values = jax.device_get(step_metrics)
          now = time.time()
          values["tokens_per_sec"] = (step - step_log) * tokens_per_batch / (now - t_log)
          writer.write(step, values)
          result = {"loss": float(values["loss"]), "accuracy": float(values["accuracy"])}
          t_log, step_log = now, step
        stopping = guards.any_process(stop.requested)
        if step % config.checkpoint.every_steps == 0 or step == end or stopping:
          ckpt.save(step, state, data_iterator=data_iter, config=config)
        if stopping:
          writer.print(f"stopped by {stop.signal_name} at step {step}; checkpoint saved")
          break
      if pending is not None:
        monitor.update(pending[0], *jax.device_get(pending[1]))
  finally:
    ckpt.close()
    writer.close()
  return {"step": step, "stopped_by": stop.signal_name if stop else None, **result}


# ------------------------------------------------------------------ loading and sampling

class LoadedGenerator(NamedTuple):
  model: ar.GPT
  params: PyTree
  config: ml_collections.ConfigDict


def load_generator(path: str, *, use_ema: bool = True) -> LoadedGenerator:
  """A generator from a training workdir (newest checkpoint) or a `jaxtok export` of one."""
  if os.path.isfile(os.path.join(path, "config.json")):  # an export
    with open(os.path.join(path, "config.json")) as f:
      config = json.load(f)
    params = ocp.StandardCheckpointer().restore(
        os.path.join(os.path.abspath(path), "variables"))["params"]
  elif os.path.isdir(os.path.join(path, "checkpoints")):
    ckpt = checkpoint.Checkpointer(os.path.join(path, "checkpoints"), max_to_keep=None)
    try:
      step = ckpt.latest_step()
      if step is None:
        raise FileNotFoundError(f"no checkpoint under {ckpt.directory}: train first")
      config = ckpt.saved_config(step)
      state = ckpt.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore()))["state"]
    finally:
      ckpt.close()
    params = state["ema_params" if use_ema else "params"]
  else:
    raise FileNotFoundError(f"--model {path!r} is neither a generator workdir (checkpoints/) "
                            f"nor a `jaxtok export` directory (config.json)")
  if not config or config.get("trainer") != "generator":
    raise ValueError(f"{path!r} holds no generator (its config has trainer="
                     f"{(config or {}).get('trainer')!r}, expected 'generator')")
  config = ml_collections.ConfigDict(config)
  return LoadedGenerator(build_model(config.model), jax.tree.map(jnp.asarray, params), config)


def image_grid(images_BHWC: np.ndarray, gap: int = 2) -> np.ndarray:
  """uint8 images in a near-square grid, `gap` white pixels apart."""
  n, h, w, c = images_BHWC.shape
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, c), 255, np.uint8)
  for i, image in enumerate(images_BHWC):
    r, col = divmod(i, cols)
    grid[r * (h + gap):r * (h + gap) + h, col * (w + gap):col * (w + gap) + w] = image
  return grid


def sample_images(generator: LoadedGenerator, tokenizer, out: str, *, num: int = 16,
                  seed: int = 0, class_id: int | None = None, cfg_scale: float = 1.0,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> dict:
  """Samples `num` token grids, decodes them with `tokenizer` (a jaxtok.load result) and
  writes out/samples.png (the grid) and out/samples.npz (tokens, labels); returns both."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  model = generator.model
  codebook = tokenizer.model.quantizer.codebook_size
  size = int(tokenizer.config.data.image_size)
  tok_shape = tuple(tokenizer.model.token_shape((size, size)))
  if codebook != model.codebook_size or tok_shape != tuple(model.token_shape):
    raise ValueError(f"the tokenizer makes {tok_shape} tokens of {codebook} codes; the generator "
                     f"was trained on {tuple(model.token_shape)} tokens of "
                     f"{model.codebook_size} codes")
  if num < 1:
    raise ValueError(f"--num must be >= 1; got {num}")
  labels = None
  if class_id is not None:
    if model.num_classes == 0:
      raise ValueError(f"--class-id: this generator is unconditional (num_classes=0); got "
                       f"{class_id}")
    if not 0 <= class_id < model.num_classes:
      raise ValueError(f"--class-id must lie in [0, {model.num_classes}); got {class_id}")
    labels = np.full((num,), class_id, np.int32)
  ids = model.sample(generator.params, seed, labels, num_samples=None if labels is not None
                     else num, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                     top_p=top_p)
  images = jax.jit(tokenizer.decode)(ids)
  images_u8 = np.asarray(jnp.round((jnp.clip(images, -1, 1) + 1.0) * 127.5), np.uint8)
  os.makedirs(out, exist_ok=True)
  Image.fromarray(image_grid(images_u8)).save(os.path.join(out, "samples.png"))
  ids = np.asarray(ids)
  np.savez(os.path.join(out, "samples.npz"), tokens=ids,
           labels=np.full((num,), -1 if class_id is None else class_id, np.int32))
  return {"tokens": ids, "images": images_u8}
