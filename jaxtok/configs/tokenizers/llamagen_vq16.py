r"""LlamaGen VQ-16 (Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable
Image Generation"): the f16 CNN VQGAN with a 16384 x 8 l2-normalised codebook, trained on
ImageNet 256x256 as in LlamaGen's tokenizer/tokenizer_image/vq_train.py defaults.

Recipe (vq_train.py / vq_loss.py): global batch 128, Adam lr 1e-4 constant, betas (0.9, 0.95),
no weight decay (the script's --weight-decay is never passed to its torch.optim.Adam), gradient
clipping at 1.0 for both networks, bf16 autocast; losses: L2 pixel (weight 1), LPIPS (1),
codebook (1) + commitment (0.25), entropy (0); PatchGAN (ndf 64, 3 layers, BatchNorm) with
hinge losses, weight 0.5 from step 20000, no adaptive weight (VQLoss's default, which
vq_train.py keeps); 40 epochs of ImageNet = 40 x 10009 steps.

Run on a GPU or TPU host (ImageNet train/ and val/ folders of JPEGs, or ArrayRecord shards):

  jaxtok train --config configs/tokenizers/llamagen_vq16.py --workdir runs/llamagen_vq16 \
      --config.data.path=/data/imagenet/train --config.data.eval_path=/data/imagenet/val

Expected, per LlamaGen's README: rFID 2.19 on ImageNet 256x256 (16x16 tokens); the paper
reports about 97% codebook usage.
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The LlamaGen VQ-16 training recipe (no arguments)."""
  if arg not in (None, ""):
    raise ValueError(f"configs/tokenizers/llamagen_vq16.py takes no argument; got {arg!r}")
  c = ml_collections.ConfigDict()
  c.trainer = "tokenizer"
  c.seed = 0
  c.model = dict(name="vqgan.VQGAN", preset="llamagen-vq16")  # 71.9 M params with the VQ
  c.quantizer = dict(name="vq.VectorQuantizer", codebook_size=16384, dim=8, metric="cosine",
                     beta=0.25, codebook_weight=1.0, entropy_weight=0.0)
  c.discriminator = dict(name="discriminators.PatchGANDiscriminator", base_features=64,
                         num_layers=3, norm="batch", num_groups=32)
  c.loss = dict(reconstruction="l2", reconstruction_weight=1.0, perceptual_weight=1.0,
                disc_weight=0.5, disc_start=20_000, adaptive_weight=False,
                adaptive_weight_layer="decoder/conv_out/kernel", gan_loss="hinge",
                gen_loss="hinge", lecam_weight=0.0, lecam_decay=0.999)
  adam = dict(lr=1e-4, warmup_steps=0, schedule="constant", end_factor=1.0, b1=0.9, b2=0.95,
              eps=1e-8, weight_decay=0.0, grad_clip_norm=1.0)
  c.optimizer = dict(adam)
  c.d_optimizer = dict(adam)
  c.data = dict(source="folder", path="", eval_path="", eval_fraction=0.0, image_size=256,
                num_train=0, num_eval=0, num_workers=16, max_skipped=0.001)
  c.train = dict(steps=400_360, batch_size=128, compute_dtype="bfloat16", ema_decay=0.9999,
                 log_every=100, max_skips_in_a_row=20)
  c.eval = dict(every_steps=5000, batch_size=64, lpips=True, use_ema=False, grid_images=8)
  c.checkpoint = dict(every_steps=5000, max_to_keep=3, async_save=True)
  c.mesh = dict(shape=(-1, 1, 1))  # data parallel over every device, as LlamaGen's DDP
  return c
