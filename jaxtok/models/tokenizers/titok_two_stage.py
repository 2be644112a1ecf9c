"""Two-stage TiTok: the released TiTok-S-128 / B-64 / L-32 (bytedance/1d-tokenizer).

Their decoder does not predict pixels: for each of the h*w patches it predicts logits over the
1024 codes of the MaskGIT VQGAN, and the MaskGIT VQGAN's CNN decoder turns the softmax-weighted
mix of those codes into pixels (1d-tokenizer modeling/titok.py `decode`, `finetune_decoder:
True`). The encoder and its quantizer are the single-stage ones (`titok.TiTok`) with the
released models' token layout (`legacy_token_layout`); the networks work on [0, 1] pixels, the
API on [-1, 1] (`pixel_range="unit"`).

Shape letters: B batch, k tokens, Q code_dim, h w patch grid, V pixel codes, C their dim.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.models.tokenizers.titok import TiTok
from jaxtok.models.tokenizers.vqgan import Decoder, VQGAN, VQGANConfig

# The MaskGIT VQGAN of jaxtok's "maskgit-f16" preset: 1024 codes of 256 dims.
MASKGIT_VQGAN = VQGAN.PRESETS["maskgit-f16"]["config"]


class TiTokTwoStage(TiTok):
  """TiTok whose decoder predicts MaskGIT-VQGAN codes, decoded to pixels by that VQGAN.

  decode(ids) = pixel_decoder(softmax(decoder(codes(ids))) @ pixel_codebook), in [-1, 1].
  The softmax mix (not an argmax) is the reference's. Parameters: TiTok's, plus
  `pixel_codebook` [V, C] and `pixel_decoder` (the VQGAN decoder, names as `vqgan.Decoder`).
  With the published quantizer (`titok.CODEBOOK`, cosine) "S-128" has 83,674,639 parameters,
  as the PyTorch checkpoint.
  """

  PRESETS = TiTok.PRESETS

  pixel_range: str = "unit"  # the released networks take and give [0, 1] pixels
  legacy_token_layout: bool = True  # the released encoders' reshape (see TiTokEncoder)
  pixel_codebook_size: int = 1024  # V
  pixel_code_dim: int = 256  # C
  pixel_config: VQGANConfig = MASKGIT_VQGAN  # the pixel decoder's architecture

  def setup(self):
    super().setup()
    if self.pixel_config.quant_conv:
      raise ValueError("pixel_config.quant_conv must be False: the pixel decoder reads the "
                       f"{self.pixel_code_dim}-dim codes directly; got True")
    grid = self.image_size // self.patch_size
    if self.pixel_config.downsample_factor * grid != self.image_size:
      raise ValueError(
          f"the pixel decoder must upsample the {grid}x{grid} code grid to image_size "
          f"{self.image_size}: pixel_config.ch_mult needs {self.image_size // grid} = 2^(levels "
          f"- 1); got ch_mult {self.pixel_config.ch_mult}")
    self.pixel_codebook = self.param(
        "pixel_codebook", nn.with_logical_partitioning(
            nn.initializers.normal(1.0), (None, None)),
        (self.pixel_codebook_size, self.pixel_code_dim))
    self.pixel_decoder = Decoder(self.pixel_config, dtype=self.dtype)

  def _code_classes(self) -> int:
    return self.pixel_codebook_size

  def _images(self, codes_BkQ: jax.Array, keep_BK: jax.Array | None = None) -> jax.Array:
    logits_BhwV = self.decoder(codes_BkQ, keep_BK)
    return self.logits_to_images(logits_BhwV)

  def logits_to_images(self, logits_BhwV: jax.Array) -> jax.Array:
    """Pixel-code logits [B, h, w, V] -> images [B, H, W, 3] f32 in [-1, 1] (unclipped)."""
    probs = jax.nn.softmax(logits_BhwV.astype(jnp.float32), axis=-1)
    codes_BhwC = jnp.einsum("bhwv,vc->bhwc", probs, self.pixel_codebook,
                            precision=jax.lax.Precision.HIGHEST)
    images = self.pixel_decoder(codes_BhwC.astype(self.dtype)).astype(jnp.float32)
    return images * 2.0 - 1.0 if self.pixel_range == "unit" else images
