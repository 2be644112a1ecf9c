r"""LlamaGen GPT-B class-conditional (Sun et al. 2024, "Autoregressive Model Beats Diffusion:
Llama for Scalable Image Generation"): 111 M parameters on 16x16 VQ-16 tokens (16384 codes) of
ImageNet 256x256, as LlamaGen's autoregressive/train/train_c2i.py defaults train it.

Recipe (train_c2i.py): AdamW lr 1e-4 constant, betas (0.9, 0.95), weight decay 0.05 on
matrices only, gradient clipping at 1.0, global batch 256, 300 epochs (300 x 5005 steps),
class dropout 0.1 (classifier-free guidance), token dropout 0.1, residual dropout 0.1, bf16
autocast, no EMA by default (kept here at 0.9999; `jaxtok export --no-ema` takes the raw
params).

Run on a GPU or TPU host, after tokenizing ImageNet with the VQ-16 tokenizer into shards whose
metadata.json carries a "labels" list (one class id per record):

  jaxtok train --config configs/generators/llamagen_gpt_b.py --workdir runs/gpt_b \
      --config.data.path=/data/imagenet_vq16_tokens
  jaxtok export --workdir runs/gpt_b --out runs/gpt_b/export
  jaxtok sample --model runs/gpt_b/export --tokenizer runs/llamagen_vq16/export --out samples \
      --class-id 207 --cfg-scale 2.0

Expected, per LlamaGen's paper: FID about 5.46 on ImageNet 256x256 with cfg 2.0.
"""

import ml_collections

EPOCH_STEPS = 1_281_167 // 256  # ImageNet train images per global batch


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The LlamaGen GPT-B c2i recipe (no arguments)."""
  if arg not in (None, ""):
    raise ValueError(f"configs/generators/llamagen_gpt_b.py takes no argument; got {arg!r}")
  c = ml_collections.ConfigDict()
  c.trainer = "ar"
  c.seed = 0
  # GPT.PRESETS["GPT-B"]: width 768, depth 12, 12 heads, LlamaGen's SwiGLU width 2048.
  c.model = dict(name="ar.GPT", preset="GPT-B", codebook_size=16384, token_shape=(16, 16),
                 num_classes=1000, cond_dropout=0.1, token_dropout=0.1, resid_dropout=0.1)
  c.optimizer = dict(lr=1e-4, warmup_steps=0, schedule="constant", end_factor=1.0, b1=0.9,
                     b2=0.95, eps=1e-8, weight_decay=0.05, grad_clip_norm=1.0)
  c.data = dict(path="", labels="metadata")
  c.train = dict(steps=300 * EPOCH_STEPS, batch_size=256, compute_dtype="bfloat16",
                 ema_decay=0.9999, log_every=100, max_skips_in_a_row=5)
  c.checkpoint = dict(every_steps=5000, max_to_keep=3, async_save=True)
  c.mesh = dict(shape=(-1, 1, 1))
  return c
