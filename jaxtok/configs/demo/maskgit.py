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

from jaxtok.configs.demo import ar


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo MaskGIT config; arg "tiny" gives the test-sized variant. Data, schedule and
  checkpoints are the demo GPT's (configs/demo/ar.py)."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/maskgit.py takes no argument or 'tiny'; got {arg!r}")
  c = ar.get_config(arg)
  c.trainer = "maskgit"  # `jaxtok train` runs jaxtok/train/maskgit_trainer.py
  # "<module>.<Class>" under jaxtok.models.generators and MaskGIT fields; token_shape and
  # codebook_size must match the token directory's metadata.json.
  c.model = dict(name="maskgit.MaskGIT", codebook_size=c.model.codebook_size,
                 token_shape=c.model.token_shape, num_classes=0, width=c.model.width,
                 depth=c.model.depth, num_heads=c.model.num_heads,
                 mlp_dim=64 if tiny else 512, cond_dropout=0.0, dropout=0.1)
  c.loss = dict(label_smoothing=0.1)  # as the MaskGIT paper
  c.optimizer.b2, c.optimizer.weight_decay = 0.96, 0.045  # as the MaskGIT paper
  return c
