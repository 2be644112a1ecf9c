r"""A patch tokenizer (4x4 RGB patches through an MLP encoder, the quantizer, an MLP decoder)
with one quantizer family at about 10 bits per token, on 32x32 crops of the bundled photos.
`jaxtok demo` part 2 trains one per family and compares them on a held-out photo.

Run (about a minute each on 2 CPU cores):

  jaxtok train --config configs/demo/patch_tokenizer.py:fsq --workdir runs/patch_fsq

Args: "vq" (EMA codebook of 1024 codes, k-means++ init, restarts; the default), "fsq"
(levels 8, 5, 5, 5), "lfq" (10 bits), "rvq" (2 levels of 32 codes); "<family>,tiny" for the
test-sized variant. Expected on held-out crops after 400 steps: PSNR about 27 dB (vq), 25 dB
(fsq), 23 dB (lfq), 26 dB (rvq).
"""

import ml_collections

_VQ = dict(name="vq.VectorQuantizer", codebook_size=1024, dim=16, use_ema=True,
           data_init="kmeans++", restart_threshold=0.05)
QUANTIZERS = {  # about 10 bits per token each
    "vq": _VQ,
    "fsq": dict(name="fsq.FSQ", levels=(8, 5, 5, 5)),
    "lfq": dict(name="lfq.LFQ", bits=10),
    "rvq": dict(name="residual.ResidualVQ", num_quantizers=2,
                quantizer={**_VQ, "codebook_size": 32}),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """arg: a key of QUANTIZERS (default "vq"), optionally followed by ",tiny"."""
  family, _, size = (arg or "vq").partition(",")
  if family not in QUANTIZERS or size not in ("", "tiny"):
    raise ValueError(f"configs/demo/patch_tokenizer.py takes one of {sorted(QUANTIZERS)}, "
                     f"optionally followed by ',tiny'; got {arg!r}")
  tiny = size == "tiny"
  c = ml_collections.ConfigDict()
  c.trainer = "tokenizer"
  c.seed = 0
  c.model = dict(name="patch.PatchTokenizer", preset="tiny" if tiny else "demo")
  c.quantizer = dict(QUANTIZERS[family])
  c.discriminator = dict(name="discriminators.PatchGANDiscriminator", preset="tiny")
  c.loss = dict(reconstruction="l2", reconstruction_weight=1.0, perceptual_weight=0.0,
                disc_weight=0.0, disc_start=0, adaptive_weight=False,
                adaptive_weight_layer="", gan_loss="hinge", gen_loss="hinge",
                lecam_weight=0.0, lecam_decay=0.999)  # pixels and quantizer losses only
  adam = dict(lr=3e-3, warmup_steps=20, schedule="cosine", end_factor=0.1, b1=0.9, b2=0.99,
              eps=1e-8, weight_decay=0.0, grad_clip_norm=0.0)
  c.optimizer = dict(adam)
  c.d_optimizer = dict(adam)  # unused: no discriminator
  c.data = dict(source="samples", path="", eval_path="", eval_fraction=0.0, image_size=32,
                num_train=256 if tiny else 4096, num_eval=16 if tiny else 128, num_workers=0,
                max_skipped=0.01)
  steps = 8 if tiny else 400
  c.train = dict(steps=steps, batch_size=8 if tiny else 32, compute_dtype="float32",
                 ema_decay=0.99, log_every=4 if tiny else 25, max_skips_in_a_row=5)
  c.eval = dict(every_steps=steps, batch_size=16 if tiny else 32, lpips=False, use_ema=False,
                grid_images=8)
  c.checkpoint = dict(every_steps=steps, max_to_keep=1, async_save=True)
  c.mesh = dict(shape=(-1, 1, 1))
  return c
