r"""The demo tokenizer (configs/demo/tokenizer.py) with a KL bottleneck instead of its VQ:
continuous 8-channel latents on an 8x8 grid for 32x32 crops of the bundled photos, the
inputs of the MAR demo (configs/demo/mar.py), on the CPU.

Run:

  jaxtok train --config configs/demo/kl_tokenizer.py --workdir runs/demo_kl
  jaxtok export --workdir runs/demo_kl --out runs/demo_kl/export

Expected on the held-out photo after 600 steps (13 minutes on 2 busy CPU cores): PSNR about
27 dB, SSIM about 0.71, LPIPS about 0.33; `jaxtok tokenize --model runs/demo_kl/export` then
writes float32 latent shards [8, 8, 8] (2048 crops: mean -0.3, std 1.8).

`get_config("tiny")` is the 16x16, few-step variant.
"""

import ml_collections

from jaxtok.configs.demo import tokenizer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo tokenizer config with a KLQuantizer; arg "tiny" gives the test-sized variant."""
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/kl_tokenizer.py takes no argument or 'tiny'; got {arg!r}")
  c = tokenizer.get_config(arg)
  # kl_weight is per element (quantizers/kl.py): 1e-4 keeps the latents near unit scale
  # (what MAR's diffusion head assumes) without costing much reconstruction.
  c.quantizer = dict(name="kl.KLQuantizer", dim=8, kl_weight=1e-4)
  return c
