r"""A tiny unconditional MAR on the latents of the demo KL tokenizer (continuous tokens: 8x8
grids of 8 channels for 32x32 crops of the bundled photos), on the CPU.

Run (the crops: `jaxtok demo` writes 2048 of them to runs/demo/generator/crops):

  jaxtok train --config configs/demo/kl_tokenizer.py --workdir runs/demo_kl
  jaxtok export --workdir runs/demo_kl --out runs/demo_kl/export
  jaxtok tokenize --model runs/demo_kl/export --images runs/demo/generator/crops \
      --out runs/demo_latents
  jaxtok train --config configs/demo/mar.py --workdir runs/demo_mar \
      --config.data.path=runs/demo_latents
  jaxtok export --workdir runs/demo_mar --out runs/demo_mar/export
  jaxtok sample --model runs/demo_mar/export --tokenizer runs/demo_kl/export \
      --out runs/demo_mar_samples --num-steps 16

Expected on those 2048 latent grids: the diffusion loss (noise MSE + variance bound, over the
masked tokens) falls from about 1 to 0.41 at step 50 and about 0.27 after 400 steps (MSE
0.26, bound 0.01; 14 minutes on 2 busy CPU cores); samples.png shows photo-like colour fields
like the GPT's, whose latents have about the data's per-channel spread. sample_clip 6 (about
the latents' range) matters: unclamped, this young head's x0 at the cosine schedule's first
steps (divided by sqrt(abar) ~ 5e-5) throws the latents to a spread of ~1000.

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
                 head_depth=2 if tiny else 3, cond_dropout=0.0, dropout=0.0,
                 sample_clip=None if tiny else 6.0)  # about the demo latents' range
  # MAR's masking (truncated normal in [min, 1]) and its head's batch repeat.
  c.loss = dict(mask_ratio_min=0.7, diffusion_batch_mul=4)
  if tiny:
    c.optimizer.lr = 1e-2
  return c
