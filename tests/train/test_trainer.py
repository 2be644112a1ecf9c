"""The tokenizer trainer end to end: what the reference run leaves in its workdir, the
held-out evaluation with LPIPS, model building from configs, the abort after K skips, and
the step's shapes for other config variants (bf16, LPIPS, StyleGAN, ViT + FSQ)."""

import os
import re
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxtok import build, cli
from jaxtok.configs.demo import tokenizer as demo_config
from jaxtok.train import guards, loop, sharding, state, tokenizer_trainer
from jaxtok.train.metrics import read_jsonl

TRAIN_KEYS = {"loss", "rec_loss", "quantizer_loss", "codebook_loss", "commitment_loss",
              "g_adv_loss", "adaptive_weight", "disc_factor", "d_loss", "logits_real",
              "logits_fake", "psnr", "usage", "perplexity", "grad_norm", "d_grad_norm", "lr",
              "d_lr", "images_per_sec", "skipped", "skipped_total", "skipped_in_a_row"}


def test_reference_run_writes_metrics_grids_events_and_checkpoints(reference_run):
  workdir, result = reference_run
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in rows if r["split"] == "train"]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert TRAIN_KEYS <= set(train[0]), TRAIN_KEYS - set(train[0])
  assert all(np.isfinite(r["loss"]) and r["skipped"] == 0 for r in train)
  assert train[-1]["rec_loss"] < train[0]["rec_loss"]
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["step"] for r in evals] == [3, 6]
  assert {"psnr", "ssim", "usage", "perplexity"} <= set(evals[-1])
  assert result["step"] == 6 and result["psnr"] == pytest.approx(evals[-1]["psnr"])
  for step in (3, 6):  # 4 originals over their reconstructions, 2 px gaps
    grid = Image.open(os.path.join(workdir, "recon", f"step_{step:07d}.png"))
    assert grid.size == (4 * 16 + 3 * 2, 2 * 16 + 2)
  (events,) = os.listdir(os.path.join(workdir, "tensorboard"))
  assert os.path.getsize(os.path.join(workdir, "tensorboard", events)) > 1000
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]


def test_evaluate_reports_psnr_ssim_lpips_and_usage(reference_run, tmp_path):
  reference, result = reference_run
  workdir = shutil.copytree(reference, tmp_path / "run")
  config = demo_config.get_config("tiny")
  config.eval.lpips = True
  metrics = tokenizer_trainer.evaluate(config, str(workdir))
  assert metrics["psnr"] == pytest.approx(result["psnr"], rel=1e-5)
  assert metrics["ssim"] == pytest.approx(result["ssim"], rel=1e-4, abs=1e-5)
  assert metrics["usage"] == pytest.approx(result["usage"])
  assert 0.0 < metrics["lpips"] < 1.0
  last = read_jsonl(os.path.join(workdir, "metrics.jsonl"))[-1]
  assert last["split"] == "eval" and last["lpips"] == pytest.approx(metrics["lpips"])


def test_cli_eval_uses_the_runs_saved_config_unless_given_one(reference_run, tmp_path, capsys,
                                                              caplog, monkeypatch):
  reference, result = reference_run
  workdir = shutil.copytree(reference, tmp_path / "run")
  monkeypatch.setattr(cli, "use_compile_cache", lambda: None)
  assert cli.main(["eval", "--workdir", str(workdir)]) == 0  # no --config: the run's own
  assert "differs" not in caplog.text
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert rows[-1]["step"] == 6 and rows[-1]["psnr"] == pytest.approx(result["psnr"], rel=1e-5)
  assert cli.main(["eval", "--workdir", str(workdir), "--config", "configs/demo/tokenizer.py:tiny",
                   "--config.data.num_eval=4"]) == 0  # another held-out set, said so
  assert re.search(r"evaluating step 6 of \S+ with a config that differs from the one saved "
                   r"with it \(saved -> now\): data.num_eval: 8 -> 4$", caplog.text, re.M)
  rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert rows[-1]["psnr"] != pytest.approx(result["psnr"], rel=1e-5)
  assert "psnr" in capsys.readouterr().out


def test_evaluate_refuses_a_workdir_in_use(reference_run, tmp_path):
  workdir = shutil.copytree(reference_run[0], tmp_path / "run")
  with guards.WorkdirLock(str(workdir)):  # e.g. the run, still training
    with pytest.raises(guards.WorkdirLockedError, match=f"in use by pid {os.getpid()} "):
      tokenizer_trainer.evaluate(None, str(workdir))


def test_evaluate_without_checkpoint_says_so(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint under .*: train first"):
    tokenizer_trainer.evaluate(demo_config.get_config("tiny"), str(tmp_path))


def test_build_tokenizer_rejects_unknown_names_and_fields():
  config = demo_config.get_config("tiny")
  for name in ("tokenizers.vqgan", "vqgan.Nothing", "nothing.VQGAN", "vqgan.jnp"):
    config.model.name = name
    with pytest.raises(ValueError, match="tokenizer name must be '<module>.<Class>' of "
                       "jaxtok.models.tokenizers, e.g. 'vqgan.VQGAN'"):
      tokenizer_trainer.build_parts(config)
  config = demo_config.get_config("tiny")
  config.model.widht = 3
  with pytest.raises(ValueError, match="tokenizer 'vqgan.VQGAN': .*widht"):
    tokenizer_trainer.build_parts(config)
  config = demo_config.get_config("tiny")
  config.model.preset = "nonesuch"
  with pytest.raises(ValueError, match="nonesuch"):
    tokenizer_trainer.build_parts(config)
  config = demo_config.get_config("tiny")
  config.loss.disc_weight = 0.0
  assert tokenizer_trainer.build_parts(config).discriminator is None


def test_presets_by_name_with_overrides():
  config = demo_config.get_config("tiny")
  config.model = dict(name="vqgan.VQGAN", preset="llamagen-vq16", config=dict(ch=32))
  tokenizer = build.model(config)
  assert tokenizer.config.ch == 32 and tokenizer.config.ch_mult == (1, 1, 2, 2, 4)
  assert tokenizer.token_shape((256, 256)) == (16, 16)


@pytest.mark.parametrize("checkpoint_every", [2, 100])
def test_train_aborts_after_k_non_finite_steps_in_a_row(checkpoint_every, tmp_path, monkeypatch,
                                                        caplog):
  """The loop's wiring: a step function that only ever skips ends the run at step K, with a
  message saying what the checkpoints hold."""

  def always_skipping(step_fn, mesh, shardings, num_constants):
    del step_fn, mesh, shardings, num_constants

    def step(state, batch, lpips_params):
      del batch, lpips_params
      new = state.replace(step=state.step + 1, skipped=state.skipped + 1,
                          skipped_in_a_row=state.skipped_in_a_row + 1)
      return new, {"loss": jnp.float32(jnp.nan), "skipped": jnp.int32(1),
                   "skipped_total": new.skipped, "skipped_in_a_row": new.skipped_in_a_row}
    return jax.jit(step, donate_argnums=(0,))

  monkeypatch.setattr(loop, "jit_step", always_skipping)
  config = demo_config.get_config("tiny")
  config.train.max_skips_in_a_row = 3
  config.eval.every_steps = 0
  config.checkpoint.every_steps = checkpoint_every
  with pytest.raises(guards.NonFiniteError, match="stopped at step 3: 3 consecutive") as error:
    tokenizer_trainer.train(config, str(tmp_path))
  rows = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert rows[0]["loss"] is None and rows[0]["skipped"] == 1
  assert "step 1: non-finite loss or gradient, update skipped" in caplog.text
  if checkpoint_every == 2:  # step 2's checkpoint: skipped steps kept the initial state
    assert os.listdir(tmp_path / "checkpoints") == ["2"]
    assert (f"the newest checkpoint is step 2 in {tmp_path / 'checkpoints'}; it holds the "
            f"initial parameters") in str(error.value)
  else:
    assert os.listdir(tmp_path / "checkpoints") == []
    assert "no checkpoint was written before the abort" in str(error.value)
  assert "Lower the learning rate" in str(error.value)


@pytest.mark.parametrize("variant", ["bf16_lpips", "no_gan", "stylegan_non_saturating",
                                     "vit_fsq"])
def test_train_step_traces_for_config_variants(variant):
  """Shapes only (no compile): each variant's step returns a state of the same layout with
  f32 parameters, and scalar metrics."""
  config = demo_config.get_config("tiny")
  if variant == "bf16_lpips":
    config.train.compute_dtype = "bfloat16"
    config.loss.perceptual_weight = 1.0
    config.loss.adaptive_weight = False
  elif variant == "no_gan":
    config.loss.disc_weight = 0.0
  elif variant == "stylegan_non_saturating":
    config.discriminator = dict(name="discriminators.StyleGANDiscriminator", base_features=4,
                                max_features=8)
    config.loss.gan_loss = config.loss.gen_loss = "non_saturating"
  else:
    config.model = dict(name="vit.ViTTokenizer", encoder_size="tiny", decoder_size="tiny",
                        patch_size=4, image_size=16)
    config.quantizer = dict(name="fsq.FSQ", levels=(8, 5, 5))
    config.loss.adaptive_weight_layer = "decoder_head/out/kernel"
  parts = tokenizer_trainer.build_parts(config)
  abstract = jax.eval_shape(lambda k: nn.meta.unbox(tokenizer_trainer.init_state(parts, 16, k)),
                            state.make_key(0))
  lpips = {}
  if config.loss.perceptual_weight > 0:
    from jaxtok.models.lpips import load_lpips_params  # pylint: disable=g-import-not-at-top
    lpips = jax.eval_shape(load_lpips_params)
  batch = {"image": jax.ShapeDtypeStruct((8, 16, 16, 3), jnp.uint8)}
  step = tokenizer_trainer.make_train_step(parts, tokenizer_trainer.LossConfig(**config.loss),
                                          config.train.ema_decay)
  new, metrics = jax.eval_shape(step, abstract, batch, lpips)
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(new) == shapes(abstract)
  assert {x.dtype for x in jax.tree.leaves(new.params)} == {jnp.dtype(jnp.float32)}
  assert all(m.shape == () for m in jax.tree.leaves(metrics))
  assert ("perceptual_loss" in metrics) == (variant == "bf16_lpips")
  assert ("d_loss" in metrics) == (variant != "no_gan")


def test_lecam_regularises_the_discriminator_only(tiny_single):
  """loss.lecam_weight > 0 changes the discriminator update alone; its EMAs of the mean
  logits follow LeCam's update with or without the weight."""
  config, parts, host_state, step, mesh, shardings = tiny_single
  assert config.loss.lecam_weight == 0.0
  images = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
  lecam = tokenizer_trainer.LossConfig(**{**config.loss, "lecam_weight": 1.0})
  with_lecam = loop.jit_step(tokenizer_trainer.make_train_step(parts, lecam,
                                                               config.train.ema_decay),
                             mesh, shardings, num_constants=1)
  results = []
  for fn in (step, with_lecam):
    state = jax.device_put(host_state, shardings)
    new, metrics = fn(state, sharding.global_batch({"image": images}, mesh), {})
    results.append((jax.device_get(new), jax.device_get(metrics)))
  (plain, m_plain), (reg, m_reg) = results
  for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(reg.params)):
    np.testing.assert_array_equal(a, b)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain.d_params),
                                                       jax.tree.leaves(reg.d_params)))
  decay = config.loss.lecam_decay
  for new in (plain, reg):  # both EMAs start at 0
    np.testing.assert_allclose(new.lecam["real"], (1 - decay) * m_plain["logits_real"],
                               rtol=1e-5)
    np.testing.assert_allclose(new.lecam["fake"], (1 - decay) * m_plain["logits_fake"],
                               rtol=1e-5)


def test_without_adaptive_weight_one_backward_pass_gives_the_two_parts_gradient(monkeypatch):
  """loss.adaptive_weight=False takes one backward pass of nll + w * adv; with the adaptive
  weight pinned to 1 the two-pass path must give the same gradient."""
  config = demo_config.get_config("tiny")
  parts = tokenizer_trainer.build_parts(config)
  host = nn.meta.unbox(jax.jit(lambda k: tokenizer_trainer.init_state(parts, 16, k))(
      state.make_key(0)))
  images = jax.random.uniform(jax.random.key(1), (4, 16, 16, 3), minval=-1, maxval=1)
  q_key, drop_key = jax.random.split(jax.random.key(2))

  def grads(adaptive: bool):
    loss = tokenizer_trainer.LossConfig(**{**config.loss.to_dict(), "perceptual_weight": 0.0,
                                           "adaptive_weight": adaptive})
    update = tokenizer_trainer.make_generator_update(parts.tokenizer, parts.discriminator,
                                                     parts.tx, loss, 0.99)
    return jax.jit(update)(host, images, jnp.float32(0.5), {}, q_key, drop_key)[2]

  monkeypatch.setattr(tokenizer_trainer.losses, "adaptive_weight", lambda a, b: jnp.float32(1))
  one_pass, two_passes = grads(False), grads(True)
  for a, b in zip(jax.tree.leaves(one_pass), jax.tree.leaves(two_passes)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert max(float(jnp.abs(a).max()) for a in jax.tree.leaves(one_pass)) > 0
