"""Trains an image tokenizer (encoder -> quantizer -> decoder) with reconstruction, perceptual,
quantizer and adversarial losses, as taming / LlamaGen do; `train(config, workdir)`.

Each step is one jitted, state-donating call: a generator update (tokenizer, its EMA and
quantizer state) then a discriminator update on the same images and the new reconstructions.
Outputs in `workdir`: checkpoints/, metrics.jsonl, tensorboard/, recon/step_*.png (held-out
originals over their reconstructions at every eval pass). configs/demo/tokenizer.py documents
every config field.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtok import build, losses
from jaxtok import config as config_lib
from jaxtok.data import images as image_lib
from jaxtok.data import pipeline, sources
from jaxtok.eval import metrics as eval_metrics
from jaxtok.models.tokenizers.tokenizer import Tokenizer
from jaxtok.train import checkpoint, guards, loop, optim, sharding
from jaxtok.train import metrics as metric_io
from jaxtok.train.state import TokenizerState, wrap_key, zero

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The `loss` config section (configs/demo/tokenizer.py explains each field)."""

  reconstruction: str  # "l1" or "l2"
  reconstruction_weight: float
  perceptual_weight: float  # LPIPS-VGG16
  disc_weight: float  # 0: no discriminator at all
  disc_start: int  # first step of the GAN terms
  adaptive_weight: bool  # taming's ||grad nll|| / ||grad adv|| at adaptive_weight_layer
  adaptive_weight_layer: str
  gan_loss: str  # discriminator loss: "hinge" or "non_saturating"
  gen_loss: str  # generator adversarial loss
  lecam_weight: float  # LeCam regulariser on the discriminator (0: off)
  lecam_decay: float  # decay of LeCam's EMAs of the mean logits


class Parts(NamedTuple):
  """Everything stateless built from a config."""

  tokenizer: Tokenizer
  discriminator: nn.Module | None  # None when loss.disc_weight == 0
  tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  lr: optax.Schedule
  d_lr: optax.Schedule


def build_parts(config) -> Parts:
  """The tokenizer (its quantizer from `quantizer`), discriminator and both optimizers."""
  dtype = config.train.compute_dtype
  tokenizer = build.tokenizer(config.model, config.quantizer, dtype)
  disc = (build.discriminator(config.discriminator, dtype) if config.loss.disc_weight > 0
          else None)
  tx, lr = optim.from_config(config.optimizer, config.train.steps)
  d_tx, d_lr = optim.from_config(config.d_optimizer, config.train.steps)
  return Parts(tokenizer, disc, tx, d_tx, lr, d_lr)


def init_state(parts: Parts, image_size: int, key: jax.Array) -> TokenizerState:
  """A fresh state (parameters still in their nn.Partitioned boxes, for sharding)."""
  images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  k_model, k_disc, k_train = jax.random.split(key, 3)
  variables = dict(parts.tokenizer.init(
      {"params": k_model, "quantizer": k_model, "dropout": k_model}, images))
  params = variables.pop("params")
  d_params, d_state = {}, {}
  if parts.discriminator is not None:
    d_state = dict(parts.discriminator.init(k_disc, images, train=True))
    d_params = d_state.pop("params")
  return TokenizerState(
      step=zero(), rng=jax.random.key_data(k_train), params=params,
      quantizer_state=variables.pop("quantizer_state", {}),
      ema_params=jax.tree.map(jnp.copy, params), opt_state=parts.tx.init(params),
      d_params=d_params, d_state=d_state, d_opt_state=parts.d_tx.init(d_params),
      lecam=losses.lecam_init()._asdict(), skipped=zero(), skipped_in_a_row=zero())


# ------------------------------------------------------------------ the two updates


def _disc_apply(disc: nn.Module, params, d_state: dict, images):
  """Discriminator logits in training mode, and its updated non-param collections."""
  if not d_state:
    return disc.apply({"params": params}, images, train=True), d_state
  logits, new = disc.apply({"params": params, **d_state}, images, train=True,
                           mutable=list(d_state))
  return logits, dict(new)


def _leaf(tree, path: str):
  node = tree
  for key in path.split("/"):
    if key not in node:
      raise ValueError(f"loss.adaptive_weight_layer={path!r}: no {key!r} among {sorted(node)}")
    node = node[key]
  return node


def make_generator_update(tokenizer: Tokenizer, disc: nn.Module | None,
                          tx: optax.GradientTransformation, loss: LossConfig, ema_decay: float):
  """(state, images, disc_factor, lpips_params, keys) -> (state, recon, grads, metrics): one
  optimizer step of the tokenizer on its reconstruction, quantizer, perceptual and (weighted)
  adversarial losses, with its EMA and quantizer state."""
  rec_loss = {"l1": losses.l1_loss, "l2": losses.l2_loss}[loss.reconstruction]

  def loss_parts(params, state, images, lpips_params, q_key, drop_key):
    out, new_vars = tokenizer.apply(
        {"params": params, "quantizer_state": state.quantizer_state}, images, train=True,
        mutable=["quantizer_state"], rngs={"quantizer": q_key, "dropout": drop_key})
    recon, q_out = out.reconstruction, out.quantizer_output
    terms = {"rec_loss": rec_loss(images, recon), "quantizer_loss": q_out.loss}
    nll = loss.reconstruction_weight * terms["rec_loss"] + q_out.loss
    if loss.perceptual_weight > 0:
      terms["perceptual_loss"] = losses.perceptual_loss(lpips_params, images, recon)
      nll = nll + loss.perceptual_weight * terms["perceptual_loss"]
    adv = jnp.float32(0.0)
    if disc is not None:
      adv = losses.generator_loss(_disc_apply(disc, state.d_params, state.d_state, recon)[0],
                                  loss.gen_loss)
    aux = (recon, dict(new_vars).get("quantizer_state", {}), {**terms, **q_out.metrics})
    return (nll, adv), aux

  def update(state: TokenizerState, images, disc_factor, lpips_params, q_key, drop_key):
    parts_fn = lambda p: loss_parts(p, state, images, lpips_params, q_key, drop_key)
    if disc is None:
      (nll, adv), vjp_fn, aux = jax.vjp(parts_fn, state.params, has_aux=True)
      (grads,) = vjp_fn((jnp.ones_like(nll), jnp.zeros_like(adv)))
      weight = adv_weight = jnp.float32(0.0)
    elif not loss.adaptive_weight:
      # The weight is known before the backward pass: one pass for nll + w * adv, not one per
      # part (the tokenizer's backward is two thirds of the step's FLOPs).
      (nll, adv), vjp_fn, aux = jax.vjp(parts_fn, state.params, has_aux=True)
      weight = jnp.float32(1.0)
      adv_weight = weight * disc_factor
      (grads,) = vjp_fn((jnp.ones_like(nll), adv_weight.astype(adv.dtype)))
    else:  # the adaptive weight needs both parts' gradients at its layer: two passes
      (nll, adv), (nll_g, adv_g), aux = losses.loss_part_grads(parts_fn, state.params,
                                                               has_aux=True)
      layer = loss.adaptive_weight_layer
      weight = losses.adaptive_weight(_leaf(nll_g, layer), _leaf(adv_g, layer))
      adv_weight = weight * disc_factor
      grads = jax.tree.map(lambda a, b: a + adv_weight * b, nll_g, adv_g)
    recon, q_state, terms = aux
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(params=params, quantizer_state=q_state, opt_state=opt_state,
                        ema_params=optim.ema_update(state.ema_params, params, ema_decay))
    metrics = {"loss": nll + adv_weight * adv, **terms, "g_adv_loss": adv,
               "adaptive_weight": weight, "grad_norm": optim.global_norm(grads)}
    return new, recon, grads, metrics

  return update


def make_discriminator_update(disc: nn.Module, d_tx: optax.GradientTransformation,
                              loss: LossConfig):
  """(state, images, recon, disc_factor) -> (state, grads, metrics): one optimizer step of the
  discriminator on real images against the (stopped) reconstructions, plus LeCam."""

  def d_loss_fn(d_params, state, images, recon, disc_factor):
    real, d_state = _disc_apply(disc, d_params, state.d_state, images)
    fake, d_state = _disc_apply(disc, d_params, d_state, sg(recon))
    d_loss = losses.discriminator_loss(real, fake, loss.gan_loss)
    ema = losses.LeCamEMA(**state.lecam)
    total = d_loss + loss.lecam_weight * losses.lecam_loss(real, fake, ema)
    lecam = losses.lecam_update(ema, real, fake, decay=loss.lecam_decay)._asdict()
    return disc_factor * total, (d_state, lecam, d_loss, jnp.mean(real), jnp.mean(fake))

  def update(state: TokenizerState, images, recon, disc_factor):
    (_, (d_state, lecam, d_loss, real, fake)), d_grads = jax.value_and_grad(
        d_loss_fn, has_aux=True)(state.d_params, state, images, recon, disc_factor)
    d_updates, d_opt_state = d_tx.update(d_grads, state.d_opt_state, state.d_params)
    new = state.replace(d_params=optax.apply_updates(state.d_params, d_updates),
                        d_state=d_state, d_opt_state=d_opt_state, lecam=lecam)
    metrics = {"d_loss": d_loss, "logits_real": real, "logits_fake": fake,
               "d_grad_norm": optim.global_norm(d_grads)}
    return new, d_grads, metrics

  return update


def make_train_step(parts: Parts, loss: LossConfig, ema_decay: float):
  """(state, batch {"image"}, lpips_params) -> (state, metrics); jit it with donation."""
  g_update = make_generator_update(parts.tokenizer, parts.discriminator, parts.tx, loss,
                                   ema_decay)
  d_update = (make_discriminator_update(parts.discriminator, parts.d_tx, loss)
              if parts.discriminator is not None else None)

  def step_fn(state: TokenizerState, batch, lpips_params):
    images = image_lib.to_float(batch["image"])
    next_key, q_key, drop_key = jax.random.split(wrap_key(state.rng), 3)
    disc_factor = (losses.gan_weight_schedule(state.step, loss.disc_start, loss.disc_weight)
                   if d_update is not None else jnp.float32(0.0))
    new, recon, grads, metrics = g_update(state, images, disc_factor, lpips_params, q_key,
                                          drop_key)
    metrics.update(disc_factor=disc_factor, lr=parts.lr(state.step),
                   psnr=jnp.mean(eval_metrics.psnr(jnp.clip(recon, -1.0, 1.0), images)))
    checked = (metrics["loss"], grads)
    if d_update is not None:
      new, d_grads, d_metrics = d_update(new, images, recon, disc_factor)
      metrics.update(d_metrics, d_lr=parts.d_lr(state.step))
      checked += (d_grads, d_metrics)
    new = new.replace(step=state.step + 1, rng=jax.random.key_data(next_key))
    ok = guards.all_finite(checked)
    new = guards.guard_step(ok, new, state)
    metrics.update(skipped=1 - ok.astype(jnp.int32), skipped_total=new.skipped,
                   skipped_in_a_row=new.skipped_in_a_row)
    return new, metrics

  return step_fn


def jitted_step(parts: Parts, config, mesh):
  """(init fn, init key, state shardings, abstract state, jitted step) on `mesh`: the step
  `train` runs, for tests, tools and benchmarks."""
  init = lambda k: init_state(parts, config.data.image_size, k)
  key, shardings, abstract = loop.layout(init, config.seed, mesh)
  step = make_train_step(parts, LossConfig(**config.loss), config.train.ema_decay)
  return init, key, shardings, abstract, loop.jit_step(step, mesh, shardings, num_constants=1)


# ------------------------------------------------------------------ data and evaluation


def make_eval_step(tokenizer: Tokenizer, use_lpips: bool):
  """(params, quantizer_state, images uint8, mask [B], lpips_params) -> (per-batch sums,
  reconstructions uint8)."""
  codebook_size = tokenizer.quantizer.codebook_size

  def eval_fn(params, quantizer_state, images_u8, mask, lpips_params):
    images = image_lib.to_float(images_u8)
    out = tokenizer.apply({"params": params, "quantizer_state": quantizer_state}, images,
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
    return sums, image_lib.to_uint8(recon)

  return eval_fn


def make_evaluate(config, parts: Parts, mesh, lpips_params) -> loop.EvalFn:
  """(state, step, writer) -> mean PSNR, SSIM (and LPIPS), codebook usage and perplexity over
  the held-out split; the reconstructions of its first images go to the writer's grid."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  source = sources.from_config(config.data, "eval")
  eval_step = jax.jit(make_eval_step(parts.tokenizer, config.eval.lpips))
  local, size = config.eval.batch_size // jax.process_count(), config.data.image_size
  # Every process runs as many batches as the largest shard needs (padding with masked rows),
  # so that the collectives of the sharded computation line up.
  num_batches = -(-(-(-len(source) // jax.process_count())) // local)

  def evaluate(state: TokenizerState, step: int, writer: metric_io.MetricWriter):
    batches = iter(pipeline.make_pipeline(source, image_size=size, batch_size=local, seed=0,
                                          train=False, max_skipped=config.data.max_skipped))
    params = state.ema_params if config.eval.use_ema else state.params
    totals = {}
    for i in range(num_batches):
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

  return evaluate


def _load_lpips(config, mesh):
  if config.loss.perceptual_weight <= 0 and not config.eval.lpips:
    return {}
  from jaxtok.models.lpips import load_lpips_params  # pylint: disable=g-import-not-at-top
  return jax.device_put(load_lpips_params(), sharding.replicated(mesh))


# ------------------------------------------------------------------ the entry points


def train(config, workdir: str, *, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) the tokenizer `config` describes in `workdir`; see `loop.run` for the
  arguments, the result ({"step", "stopped_by", **last eval metrics}) and the errors."""
  mesh = loop.make_mesh(config, ("train.batch_size", "eval.batch_size"))
  parts = build_parts(config)
  lpips_params = _load_lpips(config, mesh)
  batches = iter(pipeline.make_pipeline(
      sources.from_config(config.data, "train"), image_size=config.data.image_size,
      batch_size=config.train.batch_size // jax.process_count(), seed=config.seed, train=True,
      num_workers=config.data.num_workers, max_skipped=config.data.max_skipped))
  evaluate = (make_evaluate(config, parts, mesh, lpips_params) if config.eval.every_steps > 0
              else None)
  return loop.run(
      config, workdir, mesh=mesh, init=lambda k: init_state(parts, config.data.image_size, k),
      step=make_train_step(parts, LossConfig(**config.loss), config.train.ema_decay),
      batches=batches, constants=(lpips_params,), evaluate=evaluate,
      throughput=("images_per_sec", config.train.batch_size), stop_after=stop_after)


def evaluate(config, workdir: str, *, step: int | None = None,
             overrides: Sequence[str] = ()) -> dict[str, float]:
  """Evaluates the checkpoint at `step` (default: the newest intact one) of `workdir` on the
  held-out split; appends the result to metrics.jsonl (holding the workdir's lock) and returns it.

  The run's own config, saved with the checkpoint, is used unless `config` is given; a given
  config, or `overrides` ("a.b=value") of the saved one, are logged where they differ from it.
  """
  sharding.maybe_initialize_distributed()  # before the checkpointer touches a device
  ckpt = loop.reader(workdir)

  def restore(s: int):
    run_config = config
    if run_config is None:
      saved = ckpt.saved_config(s)
      if saved is None:
        raise ValueError(f"checkpoint step {s} in {ckpt.directory} holds no config: pass the "
                         f"run's --config")
      run_config = checkpoint.config_from_json(saved)
      for item in overrides:
        config_lib.apply_override(run_config, item)
    if run_config.get("trainer") != "tokenizer":
      raise ValueError(f"evaluation on held-out images is for tokenizers (trainer='tokenizer'); "
                       f"got trainer={run_config.get('trainer')!r}: sample a generator with "
                       f"`jaxtok sample` instead")
    loop.warn_config_differences(ckpt, s, run_config, "evaluating")
    mesh = loop.make_mesh(run_config, ("eval.batch_size",))
    parts = build_parts(run_config)
    init = lambda k: init_state(parts, run_config.data.image_size, k)
    _, _, abstract = loop.layout(init, run_config.seed, mesh)
    return run_config, mesh, parts, ckpt.restore(s, abstract, config=run_config)

  try:
    with guards.workdir_lock(workdir, create=False):
      (run_config, mesh, parts, state), step = ckpt.restore_newest(restore, step=step)
      writer = metric_io.MetricWriter(workdir, total_steps=run_config.train.steps,
                                      initial_step=step, enabled=jax.process_index() == 0,
                                      progress=False, truncate=False)
      try:
        result = make_evaluate(run_config, parts, mesh, _load_lpips(run_config, mesh))(
            state, step, writer)
        writer.write(step, result, split="eval")
      finally:
        writer.close()
  finally:
    ckpt.close()
  return result
