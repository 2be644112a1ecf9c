r"""A tiny VAR multi-scale VQVAE trained on 32x32 crops of the bundled photos, on the CPU: the
demo tokenizer's CNN and losses (configs/demo/tokenizer.py) around VAR's multi-scale residual
quantizer (256 shared codes of dim 8 at scales 1, 2, 4, 8: 85 tokens per crop).

Run:

  jaxtok train --config configs/demo/var_tokenizer.py --workdir runs/demo_var_tokenizer

Expected on the held-out photo after 600 steps (measured: 20 minutes on 2 busy CPU cores,
compilation included): PSNR 23.5 dB, SSIM 0.55, LPIPS 0.46, 62 % of the 256 codes in use
(perplexity 114); the single-scale demo VQGAN reaches 26 dB with its EMA codebook, VAR's
learned codebook with 85 tokens over four scales trails it here.

`get_config("tiny")` is the 16x16, few-step variant the tests train (scales 1, 2, 4 on a
4x4 latent: 21 tokens of 32 codes).
"""

import ml_collections

from jaxtok.configs.demo import tokenizer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The demo VAR tokenizer config; arg "tiny" gives the test-sized variant. Data, losses,
  optimisers, evaluation and checkpoints are the demo tokenizer's."""
  tiny = arg == "tiny"
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/demo/var_tokenizer.py takes no argument or 'tiny'; got {arg!r}")
  c = tokenizer.get_config(arg)
  # VAR's VQVAE: the taming CNN with 3x3 quant_conv / post_quant_conv (f = 4 here).
  c.model = dict(name="var_vqvae.VQVAE", config=dict(
      ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, decoder_res_blocks=1, attention=False,
      z_channels=8, quant_conv_kernel=3))
  # VAR's quantizer: one codebook shared by the scales, Phi convs shared by scale groups; the
  # last scale is the latent side (image_size / 4).
  c.quantizer = dict(name="multiscale.MultiScaleVQ", codebook_size=32 if tiny else 256, dim=8,
                     patch_nums=(1, 2, 4) if tiny else (1, 2, 4, 8), num_phi=2 if tiny else 4)
  return c
