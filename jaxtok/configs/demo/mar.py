r"""A tiny unconditional MAR on latents of a KL tokenizer (continuous tokens), on the CPU.

Run, with a KL tokenizer export and its latents of the bundled photos' crops in
LATENT_DIR (float16 / float32 shards, data/tokens.py; `tokenize_folder(..., dtype=
"float32")` with the tokenizer's `encode(images, return_latents=True)[1]`):

  jaxtok train --config configs/demo/mar.py --workdir runs/demo_mar \
      --config.data.path=LATENT_DIR --config.model.token_shape='(8, 8)' \
      --config.model.token_dim=C

Expected: the diffusion loss (noise MSE + variance bound, over masked tokens) falls from
about 1.0 (the zero-initialised head predicts no noise) as the head learns; the tiny variant
on a learnable latent pattern falls by more than 0.2 in 12 steps (tests/train/
test_mar_trainer.py).

`get_config("tiny")` is the test-sized variant (4x4 grids of 4 channels).
"""

import ml_collections

from jaxtok.configs.demo import ar


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo MAR config; arg "tiny" gives the test-sized variant. Optimiser, schedule and
  checkpoints are the demo GPT's (configs/demo/ar.py)."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/mar.py takes no argument or 'tiny'; got {arg!r}")
  c = ar.get_config(arg)
  c.trainer = "mar"  # `jaxtok train` runs jaxtok/train/mar_trainer.py
  # "<module>.<Class>" under jaxtok.models.generators and MAR fields; token_shape and
  # token_dim must match the latent directory's records [h, w, C].
  c.model = dict(name="mar.MAR", token_shape=(4, 4) if tiny else (8, 8),
                 token_dim=4 if tiny else 8, num_classes=0, width=32 if tiny else 128,
                 depth=1 if tiny else 3, num_heads=2 if tiny else 4,
                 buffer_size=2 if tiny else 16, head_width=32 if tiny else 256,
                 head_depth=2 if tiny else 3, cond_dropout=0.0, dropout=0.0)
  # MAR's masking (truncated normal in [min, 1]) and its head's batch repeat.
  c.loss = dict(mask_ratio_min=0.7, diffusion_batch_mul=4)
  if tiny:
    c.optimizer.lr = 1e-2
  return c
