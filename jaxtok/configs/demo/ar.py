r"""A tiny unconditional GPT on the demo tokenizer's tokens (8x8 grids of 256 codes for 32x32
crops), on the CPU.

Run (`jaxtok demo` runs all of it as its part 3):

  jaxtok train --config configs/demo/tokenizer.py --workdir runs/demo_tokenizer
  jaxtok export --workdir runs/demo_tokenizer --out runs/demo_tokenizer/export
  jaxtok tokenize --model runs/demo_tokenizer/export --images IMAGE_FOLDER \
      --out runs/demo_tokens
  jaxtok train --config configs/demo/ar.py --workdir runs/demo_ar \
      --config.data.path=runs/demo_tokens
  jaxtok export --workdir runs/demo_ar --out runs/demo_ar/export
  jaxtok sample --model runs/demo_ar/export --tokenizer runs/demo_tokenizer/export \
      --out runs/demo_samples

Expected on 2048 crops tokenized by the 600-step demo tokenizer: the training cross-entropy
falls from ln 256 = 5.55 to about 3.2 after 400 steps (next-token accuracy about 0.2; about
90 s on 2 CPU cores); samples.png shows photo-like colour fields and textures.

`get_config("tiny")` is the test-sized variant (4x4 grids of 32 codes).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo generator config; arg "tiny" gives the test-sized variant."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/ar.py takes no argument or 'tiny'; got {arg!r}")
  c = ml_collections.ConfigDict()
  c.trainer = "ar"  # `jaxtok train` runs jaxtok/train/ar_trainer.py
  c.seed = 0
  # "<module>.<Class>" under jaxtok.models.generators and GPT fields; token_shape and
  # codebook_size must match the token directory's metadata.json.
  c.model = dict(name="ar.GPT", codebook_size=32 if tiny else 256,
                 token_shape=(4, 4) if tiny else (8, 8), num_classes=0,
                 width=32 if tiny else 128, depth=2 if tiny else 4,
                 num_heads=2 if tiny else 4, mlp_dim=64 if tiny else 384,
                 cond_dropout=0.0, token_dropout=0.1, resid_dropout=0.1)
  # tiny: eps 1e-3 for the 1e-6 sharding comparison (see configs/demo/tokenizer.py).
  c.optimizer = dict(lr=3e-3 if tiny else 1e-3, warmup_steps=0 if tiny else 20,
                     schedule="cosine", end_factor=0.1, b1=0.9, b2=0.95,
                     eps=1e-3 if tiny else 1e-8, weight_decay=0.05, grad_clip_norm=1.0)
  # Token shards from `jaxtok tokenize`; labels "none" (unconditional) or "metadata".
  c.data = dict(path="", labels="none")
  c.train = dict(
      steps=6 if tiny else 400,
      batch_size=8 if tiny else 32,  # global; split over processes and data x fsdp
      compute_dtype="float32",
      ema_decay=0.9 if tiny else 0.99,
      log_every=1 if tiny else 50,
      max_skips_in_a_row=5,
  )
  c.checkpoint = dict(every_steps=2 if tiny else 200, max_to_keep=3, async_save=True)
  c.mesh = dict(shape=(1, 1, 1) if tiny else (-1, 1, 1))  # (data, fsdp, tensor)
  return c
