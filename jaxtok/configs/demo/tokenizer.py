r"""A tiny CNN VQGAN trained on 32x32 crops of the bundled photos, on the CPU.

Run (about 4-5 minutes on 2 CPU cores, compilation included; `jaxtok demo` runs it as part 1):

  jaxtok train --config configs/demo/tokenizer.py --workdir runs/demo_tokenizer

Expected on the held-out photo after 600 steps: PSNR about 27 dB (the untrained model:
12.9 dB), SSIM about 0.65 (untrained: 0.00), LPIPS about 0.40, over 90% of the 256 codes in
use; reconstruction grids in runs/demo_tokenizer/recon/.

`get_config("tiny")` is the 16x16, few-step variant the tests train.
"""

import ml_collections


def _optimizers(tiny: bool) -> tuple[dict, dict]:
  """AdamW of the tokenizer and of the discriminator (train/optim.py make_optimizer fields).

  tiny: eps 1e-3. Adam's first step maps a gradient g to lr g / (|g| + eps), with slope
  lr / eps near g = 0: with eps 1e-8 the reduction-order noise (~1e-9) of a gradient that
  cancels to ~0 moves a parameter by ~1e-6, and the sharding test compares meshes to 1e-6.
  """
  eps = 1e-3 if tiny else 1e-8
  return (dict(lr=1e-3, warmup_steps=0 if tiny else 50, schedule="cosine", end_factor=0.1,
               b1=0.9, b2=0.95, eps=eps, weight_decay=0.0, grad_clip_norm=1.0),
          dict(lr=1e-3, warmup_steps=0, schedule="constant", end_factor=1.0, b1=0.5, b2=0.9,
               eps=eps, weight_decay=0.0, grad_clip_norm=1.0))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo config; arg "tiny" gives the test-sized variant."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/tokenizer.py takes no argument or 'tiny'; got {arg!r}")
  c = ml_collections.ConfigDict()
  c.trainer = "tokenizer"  # `jaxtok train` runs jaxtok/train/tokenizer_trainer.py
  c.seed = 0

  # The tokenizer: "<module>.<Class>" under jaxtok.models.tokenizers, an optional `preset`
  # (VQGAN.PRESETS) and fields overriding it; `config` entries replace those of VQGANConfig.
  # f = 2**(len(ch_mult) - 1): 32x32 images -> 8x8 tokens.
  c.model = dict(name="vqgan.VQGAN", config=dict(
      ch=32, ch_mult=(1,) if tiny else (1, 2, 2), num_res_blocks=1, decoder_res_blocks=1,
      attention=False, z_channels=32))
  # The quantizer ("<module>.<Class>" under jaxtok.quantizers): EMA codebook, k-means++ init
  # from the first batch, dead codes restarted.
  c.quantizer = dict(name="vq.VectorQuantizer", codebook_size=32 if tiny else 256, dim=8,
                     use_ema=True, data_init="none" if tiny else "kmeans++",
                     restart_threshold=0.0 if tiny else 0.05)
  # PatchGAN; trained only when loss.disc_weight > 0.
  c.discriminator = dict(name="discriminators.PatchGANDiscriminator",
                         base_features=8 if tiny else 32,
                         num_layers=1 if tiny else 2, norm="batch" if tiny else "group",
                         num_groups=8)

  c.loss = dict(
      reconstruction="l1",  # "l1" or "l2" pixel loss
      reconstruction_weight=1.0,
      perceptual_weight=0.0,  # LPIPS-VGG16: costly on a CPU, so off in the demo
      disc_weight=0.1,  # GAN weight after disc_start (0: no discriminator at all)
      disc_start=0 if tiny else 450,  # first step of the GAN terms
      adaptive_weight=True,  # taming's ||grad nll|| / ||grad adv|| at the layer below
      adaptive_weight_layer="decoder/conv_out/kernel",
      gan_loss="hinge",  # discriminator loss: "hinge" or "non_saturating"
      gen_loss="hinge",  # generator adversarial loss
      lecam_weight=0.0,  # LeCam regulariser of the discriminator (MaskBit: 0.001); 0: off
      lecam_decay=0.999,  # decay of LeCam's EMAs of the mean real / fake logits
  )
  c.optimizer, c.d_optimizer = _optimizers(tiny)

  # Data: "samples" = random crops of scikit-image's photos (one photo held out for eval);
  # "folder" (path, eval_fraction) or "arrayrecord" (path, eval_path) for real data.
  c.data = dict(source="samples", path="", eval_path="", eval_fraction=0.0,
                image_size=16 if tiny else 32, num_train=64 if tiny else 2048,
                num_eval=8 if tiny else 128, num_workers=0, max_skipped=0.01)

  c.train = dict(
      steps=6 if tiny else 600,
      batch_size=8 if tiny else 16,  # global; split over processes and data x fsdp
      compute_dtype="float32",  # or "bfloat16" (params stay f32)
      ema_decay=0.9 if tiny else 0.99,
      log_every=1 if tiny else 50,
      max_skips_in_a_row=5,  # abort after this many consecutive non-finite steps
  )
  c.eval = dict(every_steps=3 if tiny else 200, batch_size=8 if tiny else 32,
                lpips=not tiny, use_ema=True, grid_images=4 if tiny else 8)
  c.checkpoint = dict(every_steps=2 if tiny else 200, max_to_keep=3, async_save=True)
  c.mesh = dict(shape=(1, 1, 1) if tiny else (-1, 1, 1))  # (data, fsdp, tensor); -1 fills
  return c
