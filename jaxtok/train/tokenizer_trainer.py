"""Trains an image tokenizer (encoder -> quantizer -> decoder) with reconstruction, perceptual,
quantizer and adversarial losses, as taming / LlamaGen do; `train(config, workdir)`.

The flow: build the models from the config -> abstract state via `jax.eval_shape` -> its
shardings on the mesh -> jit init with those out_shardings, or restore the newest checkpoint
of `workdir` (state and data position) -> the loop. Each step is one jitted, state-donating
call updating the tokenizer, its EMA, the quantizer state and the discriminator together.

Outputs in `workdir`: checkpoints/, metrics.jsonl, tensorboard/, recon/step_*.png (originals
over reconstructions of held-out images, at every eval pass).

Config (see configs/demo/tokenizer.py for every field): model (tokenizer module path and its
fields), quantizer (a `jaxtok.quantizers.build` mapping), discriminator, loss, optimizer,
d_optimizer, data, train, eval, checkpoint, mesh, seed.
"""

import inspect
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtok import losses
from jaxtok.data import pipeline, samples, sources
from jaxtok.eval import metrics as eval_metrics
from jaxtok.train import checkpoint, guards, sharding
from jaxtok.train import metrics as metric_io
from jaxtok.train import state as state_lib

sg = jax.lax.stop_gradient


def _disc_apply(disc: nn.Module, params, d_state: dict, images):
  """Discriminator logits in training mode, and its updated non-param collections."""
  kwargs = {"train": True} if "train" in inspect.signature(type(disc).__call__).parameters else {}
  if not d_state:
    return disc.apply({"params": params}, images, **kwargs), d_state
  logits, new = disc.apply({"params": params, **d_state}, images, mutable=list(d_state), **kwargs)
  return logits, dict(new)


def _leaf(tree, path: str):
  node = tree
  for key in path.split("/"):
    if key not in node:
      raise ValueError(f"loss.adaptive_weight_layer={path!r}: no {key!r} among {sorted(node)}")
    node = node[key]
  return node


def to_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> f32 [-1, 1]; float images pass through as f32."""
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


# ------------------------------------------------------------------ state and steps

def make_train_step(parts: state_lib.Parts, config):
  """(state, batch {"image"}, lpips_params) -> (state, metrics); jit it with donation."""
  loss_cfg, disc = config.loss, parts.discriminator
  rec_loss = {"l1": losses.l1_loss, "l2": losses.l2_loss}[loss_cfg.reconstruction]
  ema_decay = config.train.ema_decay

  def step_fn(state: state_lib.TokenizerState, batch, lpips_params):
    images = to_float(batch["image"])
    next_key, q_key, drop_key = jax.random.split(state_lib.wrap_key(state.rng), 3)
    disc_factor = (losses.gan_weight_schedule(state.step, loss_cfg.disc_start, loss_cfg.disc_weight)
                   if disc is not None else jnp.float32(0.0))

    def loss_parts(params):
      out, new_vars = parts.tokenizer.apply(
          {"params": params, "quantizer_state": state.quantizer_state}, images, train=True,
          mutable=["quantizer_state"], rngs={"quantizer": q_key, "dropout": drop_key})
      recon, q_out = out.reconstruction, out.quantizer_output
      terms = {"rec_loss": rec_loss(images, recon), "quantizer_loss": q_out.loss}
      nll = loss_cfg.reconstruction_weight * terms["rec_loss"] + q_out.loss
      if loss_cfg.perceptual_weight > 0:
        terms["perceptual_loss"] = losses.perceptual_loss(lpips_params, images, recon)
        nll = nll + loss_cfg.perceptual_weight * terms["perceptual_loss"]
      adv = jnp.float32(0.0)
      if disc is not None:
        adv = losses.generator_loss(_disc_apply(disc, state.d_params, state.d_state, recon)[0],
                                    loss_cfg.gen_loss)
      aux = (recon, dict(new_vars).get("quantizer_state", {}), terms, q_out.metrics)
      return (nll, adv), aux

    if disc is not None:
      (nll, adv), (nll_g, adv_g), aux = losses.loss_part_grads(loss_parts, state.params,
                                                               has_aux=True)
      weight = jnp.float32(1.0)
      if loss_cfg.adaptive_weight:
        layer = loss_cfg.adaptive_weight_layer
        weight = losses.adaptive_weight(_leaf(nll_g, layer), _leaf(adv_g, layer))
      adv_weight = weight * disc_factor
      grads = jax.tree.map(lambda a, b: a + adv_weight * b, nll_g, adv_g)
    else:
      def nll_only(params):
        (nll, adv), aux = loss_parts(params)
        return nll, (adv, aux)
      (nll, (adv, aux)), grads = jax.value_and_grad(nll_only, has_aux=True)(state.params)
      weight = adv_weight = jnp.float32(0.0)
    recon, q_state, terms, q_metrics = aux
    updates, opt_state = parts.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(
        step=state.step + 1, rng=jax.random.key_data(next_key), params=params,
        quantizer_state=q_state, opt_state=opt_state,
        ema_params=state_lib.ema_update(state.ema_params, params, ema_decay))

    d_metrics = {}
    if disc is not None:
      def d_loss_fn(d_params):
        real, d_state = _disc_apply(disc, d_params, state.d_state, images)
        fake, d_state = _disc_apply(disc, d_params, d_state, sg(recon))
        d_loss = losses.discriminator_loss(real, fake, loss_cfg.gan_loss)
        return disc_factor * d_loss, (d_state, d_loss, jnp.mean(real), jnp.mean(fake))
      (_, (d_state, d_loss, real, fake)), d_grads = jax.value_and_grad(
          d_loss_fn, has_aux=True)(state.d_params)
      d_updates, d_opt_state = parts.d_tx.update(d_grads, state.d_opt_state, state.d_params)
      new = new.replace(d_params=optax.apply_updates(state.d_params, d_updates),
                        d_state=d_state, d_opt_state=d_opt_state)
      d_metrics = {"d_loss": d_loss, "logits_real": real, "logits_fake": fake,
                   "d_grad_norm": state_lib.global_norm(d_grads), "d_lr": parts.d_lr(state.step)}

    loss = nll + adv_weight * adv
    ok = guards.all_finite((loss, grads, d_metrics))
    new = guards.guard_step(ok, new, state)
    recon01 = jnp.clip(recon, -1.0, 1.0)
    metrics = {
        "loss": loss, **terms, **q_metrics, "g_adv_loss": adv, "adaptive_weight": weight,
        "disc_factor": disc_factor, **d_metrics,
        "psnr": jnp.mean(eval_metrics.psnr(recon01, images)),
        "grad_norm": state_lib.global_norm(grads), "lr": parts.lr(state.step),
        "skipped": 1 - ok.astype(jnp.int32), "skipped_total": new.skipped,
        "skipped_in_a_row": new.skipped_in_a_row}
    return new, metrics

  return step_fn


def make_eval_step(parts: state_lib.Parts, use_lpips: bool):
  """(params, quantizer_state, images uint8, mask [B], lpips_params) -> per-batch sums."""
  codebook_size = parts.tokenizer.quantizer.codebook_size

  def eval_fn(params, quantizer_state, images_u8, mask, lpips_params):
    images = to_float(images_u8)
    out = parts.tokenizer.apply({"params": params, "quantizer_state": quantizer_state}, images,
                                train=False)
    recon = jnp.clip(out.reconstruction, -1.0, 1.0)
    m = mask.astype(jnp.float32)
    sums = {"psnr": jnp.sum(m * eval_metrics.psnr(recon, images)),
            "ssim": jnp.sum(m * eval_metrics.ssim(recon, images)), "count": jnp.sum(m)}
    if use_lpips:
      from jaxtok.models.lpips import LPIPS  # pylint: disable=g-import-not-at-top
      sums["lpips"] = jnp.sum(m * LPIPS().apply(lpips_params, recon, images))
    if codebook_size > 0:
      sums["code_counts"] = eval_metrics.code_counts(out.quantizer_output.indices,
                                                     codebook_size, mask)
    recon_u8 = jnp.round((recon + 1.0) * 127.5).astype(jnp.uint8)
    return sums, recon_u8

  return eval_fn


# ------------------------------------------------------------------ data and evaluation

def make_source(data_config, split: str):
  """The record source of `split` ("train" or "eval") that `data.source` names."""
  kind = data_config.source
  if kind == "samples":  # bundled photo crops: the demo and tests
    count = data_config.num_train if split == "train" else data_config.num_eval
    return samples.SampleCrops(count=count, size=data_config.image_size, seed=0, split=split)
  if kind == "folder":  # eval: a folder of its own (eval_path), else a hash split of path
    if split == "eval" and data_config.eval_path:
      return sources.FolderSource(data_config.eval_path)
    return sources.FolderSource(data_config.path, split=split,
                                eval_fraction=data_config.eval_fraction)
  if kind == "arrayrecord":
    return sources.ArrayRecordSource(data_config.path if split == "train"
                                     else data_config.eval_path)
  raise ValueError(f"data.source must be 'samples', 'folder' or 'arrayrecord'; got {kind!r}")


def train_iterator(config):
  """This process's checkpointable iterator of training batches."""
  ds = pipeline.make_pipeline(
      make_source(config.data, "train"), image_size=config.data.image_size,
      batch_size=config.train.batch_size // jax.process_count(), seed=config.seed, train=True,
      num_workers=config.data.num_workers, max_skipped=config.data.max_skipped)
  return iter(ds)


def run_eval(config, state, source, mesh, eval_step, lpips_params, *, step: int,
             writer: metric_io.MetricWriter) -> dict[str, float]:
  """One pass over the held-out `source`: mean PSNR, SSIM (and LPIPS), codebook usage and
  perplexity; the reconstructions of its first images go to the writer's grid."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  local, size = config.eval.batch_size // jax.process_count(), config.data.image_size
  batches = iter(pipeline.make_pipeline(source, image_size=size, batch_size=local, seed=0,
                                        train=False, max_skipped=config.data.max_skipped))
  params = state.ema_params if config.eval.use_ema else state.params
  # Every process runs as many batches as the largest shard needs (padding with masked rows),
  # so that the collectives of the sharded computation line up.
  per_process = -(-len(source) // jax.process_count())
  totals = {}
  for i in range(-(-per_process // local)):
    images = next(batches, {"image": np.zeros((0, size, size, 3), np.uint8)})["image"]
    mask = np.arange(local) < len(images)
    images = np.concatenate([images, np.zeros((local - len(images), size, size, 3), np.uint8)])
    batch = sharding.global_batch({"image": images, "mask": mask}, mesh)
    sums, recon = eval_step(params, state.quantizer_state, batch["image"], batch["mask"],
                            lpips_params)
    for k, v in jax.device_get(sums).items():
      totals[k] = totals.get(k, 0.0) + np.asarray(v, np.float64)
    if i == 0 and config.eval.grid_images > 0:
      count = min(config.eval.grid_images, len(source))
      gather = lambda x: multihost_utils.process_allgather(x, tiled=True)[:count]
      writer.recon_grid(step, gather(batch["image"]), gather(recon))
  count = max(float(totals.pop("count")), 1.0)
  results = {k: float(v) / count for k, v in totals.items() if k != "code_counts"}
  if "code_counts" in totals:
    results.update(eval_metrics.usage_from_counts(totals["code_counts"]))
  return results


# ------------------------------------------------------------------ the entry points

def _load_lpips(config, mesh):
  if config.loss.perceptual_weight <= 0 and not config.eval.lpips:
    return {}
  from jaxtok.models.lpips import load_lpips_params  # pylint: disable=g-import-not-at-top
  return jax.device_put(load_lpips_params(), sharding.replicated(mesh))


def layout(parts: state_lib.Parts, config, mesh):
  """Shapes via eval_shape -> shardings; returns (init key, shardings, abstract state)."""
  key = state_lib.make_key(config.seed)
  boxed = jax.eval_shape(lambda k: state_lib.init_state(parts, config, k), key)
  shardings = sharding.state_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return key, shardings, abstract


def jit_train_step(parts: state_lib.Parts, config, mesh, shardings):
  """The train step jitted for `mesh`: state donated, batch split over data x fsdp."""
  repl = sharding.replicated(mesh)
  return jax.jit(make_train_step(parts, config), donate_argnums=(0,),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), repl),
                 out_shardings=(shardings, repl))


def init_fn(parts: state_lib.Parts, config, shardings):
  """jit(key -> fresh state) placed on `shardings`."""
  return jax.jit(lambda k: nn.meta.unbox(state_lib.init_state(parts, config, k)),
                 out_shardings=shardings)


def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes, from the newest checkpoint in `workdir`) until `train.steps`.

  Args:
    config: a ConfigDict as configs/demo/tokenizer.py builds.
    workdir: where checkpoints, metrics and pictures go; an existing run there resumes.
    stop_after: stop (with a checkpoint) once this step is reached, e.g. to split a run into
      jobs; the learning-rate schedule still runs to `train.steps`.

  Returns:
    {"step": last step, "stopped_by": signal name or None, **last eval metrics}.
  Raises:
    guards.NonFiniteError: `train.max_skips_in_a_row` consecutive non-finite steps.
    checkpoint.CheckpointMismatchError: the workdir's checkpoint does not fit this config.
  """
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh.shape)
  sharding.check_batch_size(config.train.batch_size, mesh, name="train.batch_size")
  sharding.check_batch_size(config.eval.batch_size, mesh, name="eval.batch_size")
  parts = state_lib.build_parts(config)
  lpips_params = _load_lpips(config, mesh)
  data_iter = train_iterator(config)
  eval_source = make_source(config.data, "eval") if config.eval.every_steps > 0 else None

  key, shardings, abstract = layout(parts, config, mesh)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.checkpoint.max_to_keep,
                                 async_save=config.checkpoint.async_save)
  start = ckpt.latest_step()
  if start is None:
    state, start = init_fn(parts, config, shardings)(key), 0
  else:
    state = ckpt.restore(start, abstract, data_iterator=data_iter, config=config)
  train_step = jit_train_step(parts, config, mesh, shardings)
  eval_step = jax.jit(make_eval_step(parts, config.eval.lpips))

  total = config.train.steps
  end = total if stop_after is None else min(total, stop_after)
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
        state, step_metrics = train_step(state, batch, lpips_params)
        step += 1
        writer.advance()
        if pending is not None:  # read one step late: the device runs ahead meanwhile
          monitor.update(pending[0], *jax.device_get(pending[1]))
        pending = (step, (step_metrics["skipped_total"], step_metrics["skipped_in_a_row"]))
        if step % config.train.log_every == 0 or step == end:
          values = jax.device_get(step_metrics)
          now = time.time()
          values["images_per_sec"] = (step - step_log) * config.train.batch_size / (now - t_log)
          writer.write(step, values)
          t_log, step_log = now, step
        if config.eval.every_steps > 0 and (step % config.eval.every_steps == 0
                                             or step == total):
          result = run_eval(config, state, eval_source, mesh, eval_step, lpips_params,
                            step=step, writer=writer)
          writer.write(step, result, split="eval")
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


def evaluate(config, workdir: str, *, step: int | None = None) -> dict[str, float]:
  """Evaluates the checkpoint at `step` (default: the newest) of `workdir` on the held-out
  split; appends the result to metrics.jsonl and returns it."""
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh.shape)
  sharding.check_batch_size(config.eval.batch_size, mesh, name="eval.batch_size")
  parts = state_lib.build_parts(config)
  _, _, abstract = layout(parts, config, mesh)
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint under {directory}: train first")
  ckpt = checkpoint.Checkpointer(directory, max_to_keep=None)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint under {directory}: train first")
  state = ckpt.restore(step, abstract, config=config)
  writer = metric_io.MetricWriter(workdir, total_steps=config.train.steps, initial_step=step,
                                  enabled=jax.process_index() == 0, progress=False,
                                  truncate=False)
  try:
    result = run_eval(config, state, make_source(config.data, "eval"), mesh,
                      jax.jit(make_eval_step(parts, config.eval.lpips)),
                      _load_lpips(config, mesh), step=step, writer=writer)
    writer.write(step, result, split="eval")
  finally:
    ckpt.close()
    writer.close()
  return result
