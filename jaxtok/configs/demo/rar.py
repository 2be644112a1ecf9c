r"""A tiny unconditional RAR on the demo tokenizer's tokens (8x8 grids of 256 codes for 32x32
crops), on the CPU: random generation orders for the first quarter of training, annealed to
raster order by the half (RAR's schedule at 1/1000 of its length), sampled in raster order.

Run, after part 1 and the tokenize step of configs/demo/ar.py:

  jaxtok train --config configs/demo/rar.py --workdir runs/demo_rar \
      --config.data.path=runs/demo_tokens
  jaxtok export --workdir runs/demo_rar --out runs/demo_rar/export
  jaxtok sample --model runs/demo_rar/export --tokenizer runs/demo_tokenizer/export \
      --out runs/demo_rar_samples

Expected on 2048 crops tokenized by the 600-step demo tokenizer: the training cross-entropy
falls from ln 256 = 5.55 to 4.2 at step 100 (random orders), 3.3 at step 200 (raster from
there on) and about 3.0 after 400 steps (next-token accuracy about 0.25; 6.5 minutes on 2
busy CPU cores); samples.png shows photo-like colour fields like the GPT's.

`get_config("tiny")` is the test-sized variant (4x4 grids of 32 codes).
"""

import ml_collections

from jaxtok.configs.demo import ar


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo RAR config; arg "tiny" gives the test-sized variant. Data, optimiser, schedule
  and checkpoints are the demo GPT's (configs/demo/ar.py)."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/rar.py takes no argument or 'tiny'; got {arg!r}")
  c = ar.get_config(arg)
  c.trainer = "rar"  # `jaxtok train` runs jaxtok/train/rar_trainer.py
  # "<module>.<Class>" under jaxtok.models.generators and RAR fields; token_shape and
  # codebook_size must match the token directory's metadata.json. The spare rows of the
  # position tables (1024 and 100 in the published models) are not needed here.
  c.model = dict(name="rar.RAR", codebook_size=c.model.codebook_size,
                 token_shape=c.model.token_shape, num_classes=0, width=c.model.width,
                 depth=c.model.depth, num_heads=c.model.num_heads,
                 mlp_dim=64 if tiny else 512, extra_positions=2, extra_steps=1,
                 cond_dropout=0.0, resid_dropout=0.1)
  # Probability of a random order: 1 until anneal_start, linear to 0 at anneal_end.
  c.orders = dict(anneal_start=2 if tiny else 100, anneal_end=4 if tiny else 200)
  if tiny:  # adaLN-zero blocks start as the identity: 12 tiny steps need a larger step size
    c.optimizer.lr = 1e-2
  return c
