r"""A tiny unconditional MaskGIT on the demo tokenizer's tokens (8x8 grids of 256 codes for
32x32 crops), on the CPU: the masked-token objective of the MaskGIT paper (cosine mask
schedule, label smoothing 0.1), sampled in 8 parallel decoding steps.

Run, after part 1 and the tokenize step of configs/demo/ar.py:

  jaxtok train --config configs/demo/maskgit.py --workdir runs/demo_maskgit \
      --config.data.path=runs/demo_tokens
  jaxtok export --workdir runs/demo_maskgit --out runs/demo_maskgit/export
  jaxtok sample --model runs/demo_maskgit/export --tokenizer runs/demo_tokenizer/export \
      --out runs/demo_maskgit_samples --num-steps 8

Expected on 2048 crops tokenized by the 600-step demo tokenizer: the masked-token
cross-entropy (label-smoothed) falls from about ln 256 = 5.55 to about 4 in 400 steps (about
2 minutes on 2 CPU cores); samples.png shows colour fields like the GPT's.

`get_config("tiny")` is the test-sized variant (4x4 grids of 32 codes).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo MaskGIT config; arg "tiny" gives the test-sized variant."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/maskgit.py takes no argument or 'tiny'; got {arg!r}")
  c = ml_collections.ConfigDict()
  c.trainer = "maskgit"  # `jaxtok train` runs jaxtok/train/maskgit_trainer.py
  c.seed = 0
  # "<module>.<Class>" under jaxtok.models.generators and MaskGIT fields; token_shape and
  # codebook_size must match the token directory's metadata.json.
  c.model = dict(name="maskgit.MaskGIT", codebook_size=32 if tiny else 256,
                 token_shape=(4, 4) if tiny else (8, 8), num_classes=0,
                 width=32 if tiny else 128, depth=2 if tiny else 4,
                 num_heads=2 if tiny else 4, mlp_dim=64 if tiny else 512,
                 cond_dropout=0.0, dropout=0.1)
  c.loss = dict(label_smoothing=0.1)  # as the MaskGIT paper
  # tiny: eps 1e-3 for the 1e-6 sharding comparison (see configs/demo/tokenizer.py).
  c.optimizer = dict(lr=3e-3 if tiny else 1e-3, warmup_steps=0 if tiny else 20,
                     schedule="cosine", end_factor=0.1, b1=0.9, b2=0.96,
                     eps=1e-3 if tiny else 1e-8, weight_decay=0.045, grad_clip_norm=1.0)
  c.data = dict(path="", labels="none")  # token shards; labels "none" or "metadata"
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
