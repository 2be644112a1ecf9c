"""VAR's multi-scale VQVAE (Tian et al. 2024): the taming CNN of `vqgan.VQGAN` around a
`quantizers.MultiScaleVQ`, with 3×3 quant_conv / post_quant_conv.

Its tokens are the K token maps of the multi-scale quantizer, flattened and concatenated
(smallest first): indices [B, L], L = Σ pn² (680 for 256×256 images with VAR's scales), so
`token_shape` is (L,). `decode` takes all L ids or any prefix of whole scales (a coarser
image). The encoder/decoder follow VAR's released `vae_ch160v4096z32` (ch 160, ch_mult
(1, 1, 2, 2, 4), attention at the lowest level and in the middle, z 32): 108,948,355
parameters with its quantizer (4096 × 32 codes, 4 shared Phi convs), as VAR's code counts.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.models.tokenizers.tokenizer import check_tokens, spatial_shape
from jaxtok.models.tokenizers.vqgan import VQGAN, VQGANConfig
from jaxtok.quantizers.multiscale import scale_bounds


class VQVAE(VQGAN):
  """VQGAN whose quantizer is a `MultiScaleVQ`; flat multi-scale token ids [B, L].

  Build with the quantizer it was published with:
  `VQVAE.from_preset("var-vqvae-f16", quantizer=MultiScaleVQ())`.
  """

  PRESETS = {
      # VAR's vae_ch160v4096z32 (with MultiScaleVQ(4096, 32)): 108,948,355 params.
      "var-vqvae-f16": {"config": VQGANConfig(ch=160, z_channels=32, quant_conv_kernel=3)},
      # For tests and CPU demos: f2, ch 32, z 8 (pair with MultiScaleVQ(dim=8, small scales)).
      "tiny": {"config": VQGANConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1,
                                     decoder_res_blocks=2, z_channels=8,
                                     quant_conv_kernel=3)},
  }

  def setup(self):
    if not hasattr(self.quantizer, "patch_nums"):
      raise TypeError(f"VQVAE needs a multi-scale quantizer (quantizers.MultiScaleVQ); got "
                      f"{type(self.quantizer).__name__}")
    super().setup()

  def token_shape(self, image_shape: Sequence[int]) -> tuple[int]:
    """(L,) for images whose latent side H/f equals the quantizer's last patch_num."""
    height, width = spatial_shape(image_shape)
    side = self.quantizer.patch_nums[-1] * self.downsample_factor
    if (height, width) != (side, side):
      raise ValueError(f"images must be {side}×{side} (latent side = the quantizer's last "
                       f"patch_num {self.quantizer.patch_nums[-1]} × f {self.downsample_factor})"
                       f"; got image_shape {tuple(image_shape)}")
    return (self.quantizer.num_tokens,)

  def decode(self, indices, *, image_shape=None) -> jax.Array:
    """Flat ids [B, l] of the first scales (all L, or any prefix of whole scales) -> images
    [B, H, W, 3] float32."""
    shape = tuple(np.shape(indices))
    ends = [e for _, e in scale_bounds(self.quantizer.patch_nums)]
    if image_shape is not None:
      self.token_shape(image_shape)
    if len(shape) != 2 or shape[1] not in ends:
      raise ValueError(f"indices must be flat multi-scale ids [B, l] with l in {ends} (whole "
                       f"scales, smallest first); got shape {shape}")
    check_tokens(indices, token_shape=(ends[-1],), codebook_size=self.quantizer.codebook_size,
                 allow_prefix=True)
    codes = self.quantizer.indices_to_codes(jnp.asarray(indices))
    return self.decode_latents(codes)
