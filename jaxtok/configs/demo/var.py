r"""A tiny unconditional VAR on the tokens of the demo VAR tokenizer (configs/demo/
var_tokenizer.py: 85 multi-scale tokens of 256 codes for 32x32 crops), on the CPU.

Run:

  jaxtok train --config configs/demo/var_tokenizer.py --workdir runs/demo_var_tokenizer
  jaxtok export --workdir runs/demo_var_tokenizer --out runs/demo_var_tokenizer/export
  jaxtok tokenize --model runs/demo_var_tokenizer/export --images IMAGE_FOLDER \
      --out runs/demo_var_tokens
  jaxtok train --config configs/demo/var.py --workdir runs/demo_var \
      --config.data.path=runs/demo_var_tokens \
      --config.data.tokenizer=runs/demo_var_tokenizer/export
  jaxtok export --workdir runs/demo_var --out runs/demo_var/export
  jaxtok sample --model runs/demo_var/export --tokenizer runs/demo_var_tokenizer/export \
      --out runs/demo_var_samples

Expected on the 2048 crops (tokenized by the 600-step tokenizer: 85 ids each): the training
loss (cross-entropy with VAR's label smoothing 0.1) falls from ln 256 = 5.55 to 4.86 at step
50 and about 4.0-4.1 at steps 300-400, next-token accuracy 0.15 (0.13 on the last, 8x8
scale); 5.4 minutes on 2 busy CPU cores; samples.png shows photo-like colour fields.

`get_config("tiny")` is the test-sized variant (21 tokens of 32 codes, scales 1, 2, 4).
"""

import ml_collections

from jaxtok.configs.demo import ar


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo VAR config; arg "tiny" gives the test-sized variant. Optimiser, schedule and
  checkpoints are the demo GPT's (configs/demo/ar.py)."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/var.py takes no argument or 'tiny'; got {arg!r}")
  c = ar.get_config(arg)
  c.trainer = "var"  # `jaxtok train` runs jaxtok/train/var_trainer.py
  # "<module>.<Class>" under jaxtok.models.generators and VAR fields; codebook_size,
  # latent_dim and patch_nums must be the tokenizer's (its quantizer's codebook_size, dim and
  # patch_nums). num_classes 0: unconditional (the photos have no classes).
  c.model = dict(name="var.VAR", codebook_size=32 if tiny else 256, latent_dim=8,
                 patch_nums=(1, 2, 4) if tiny else (1, 2, 4, 8), num_classes=0,
                 width=32 if tiny else 128, depth=2 if tiny else 4,
                 num_heads=2 if tiny else 4, cond_dropout=0.0,
                 drop_path_rate=0.0 if tiny else 0.05)
  # Token shards from `jaxtok tokenize` and the export of the tokenizer that made them (its
  # quantizer turns ids into VAR's teacher-forcing inputs); labels "none" or "metadata".
  c.data = dict(path="", labels="none", tokenizer="")
  c.loss = dict(label_smoothing=0.1)  # VAR's
  return c
