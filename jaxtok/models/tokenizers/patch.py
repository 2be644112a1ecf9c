"""Patch tokenizer: an MLP on each p x p patch, any quantizer, an MLP back to the patch.

No layer mixes patches, so each token sees only its own pixels: the smallest real tokenizer,
which trains in seconds on a CPU and isolates what the quantizer does (the demo compares
quantizer families with it).

Shape letters: B batch, H W image size, p patch side, h w = H/p W/p the token grid,
P = p*p*3 pixels per patch, D quantizer input_dim, Q its code_dim.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers.embed import dense
from jaxtok.layers.patchify import patchify, unpatchify
from jaxtok.models.presets import Presets
from jaxtok.models.tokenizers.tokenizer import GridTokenizer, prepare_images

Dtype = Any


class PatchMLP(nn.Module):
  """[..., in] -> [..., features]: `depth` x (Dense(width), GELU), then Dense(features)."""

  width: int
  depth: int
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_axis = None  # pixels and quantizer channels are thin: never split
    for i in range(self.depth):
      out_axis = ("embed", "mlp")[i % 2]  # alternate, so no kernel names one axis twice
      x = nn.gelu(dense(self.width, f"hidden_{i}", self.dtype, (in_axis, out_axis))(x))
      in_axis = out_axis
    return dense(self.features, "out", self.dtype, (in_axis, None))(x)


class PatchTokenizer(Presets, GridTokenizer):
  """patchify -> per-patch MLP -> quantizer -> per-patch MLP -> unpatchify; see tokenizer.py.

  Tokens form an (H/p, W/p) grid; any H, W divisible by p is accepted. Indices are whatever
  the quantizer gives per token: [B, h, w], or [B, h, w, L] for residual / grouped ones.
  """

  PRESETS = {
      "tiny": dict(patch_size=4, width=32, depth=1),  # for tests
      "demo": dict(patch_size=4, width=128, depth=2),  # the demo's quantizer comparison
  }

  quantizer: nn.Module  # any jaxtok quantizer, built by the caller
  patch_size: int = 4  # p
  width: int = 128  # hidden width of both MLPs
  depth: int = 2  # hidden layers of each MLP
  dtype: Dtype = jnp.float32  # compute dtype of the MLPs; params are f32, the quantizer sees f32

  def setup(self):
    if self.patch_size < 1 or self.depth < 0:
      raise ValueError(f"patch_size must be >= 1 and depth >= 0; got patch_size="
                       f"{self.patch_size}, depth={self.depth}")
    self.encoder = PatchMLP(self.width, self.depth, self.quantizer.input_dim, self.dtype)
    self.decoder = PatchMLP(self.width, self.depth, self.patch_size**2 * 3, self.dtype)

  @property
  def downsample_factor(self) -> int:
    return self.patch_size

  def _latents(self, images) -> jax.Array:
    """Checked images -> f32 quantizer inputs z [B, h, w, D]."""
    x_BHWC = prepare_images(images, factor=self.patch_size)
    patches_BhwP = patchify(x_BHWC.astype(jnp.float32), self.patch_size)
    return self.encoder(patches_BhwP).astype(jnp.float32)

  def _pixels(self, codes_BhwE: jax.Array) -> jax.Array:
    """Quantized codes [B, h, w, E] -> images [B, h*p, w*p, 3]."""
    return unpatchify(self.decoder(codes_BhwE).astype(jnp.float32), self.patch_size)
