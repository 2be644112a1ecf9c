"""Patch tokenizer: an MLP on each p x p patch, any quantizer, an MLP back to the patch.

No layer mixes patches, so each token sees only its own pixels: the smallest real tokenizer,
which trains in seconds on a CPU and isolates what the quantizer does (the demo compares
quantizer families with it).

Shape letters: B batch, H W image size, p patch side, h w = H/p W/p the token grid,
P = p*p*3 pixels per patch, D quantizer input_dim, Q its code_dim.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.layers.embed import dense
from jaxtok.layers.patchify import patchify, unpatchify
from jaxtok.models.presets import Presets
from jaxtok.models.tokenizers.tokenizer import (
    Tokenizer, TokenizerOutput, check_divisible, check_tokens, prepare_images, spatial_shape)

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


class PatchTokenizer(Presets, Tokenizer):
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

  def token_shape(self, image_shape: Sequence[int]) -> tuple[int, int]:
    """(H/p, W/p) for image_shape (H, W), (H, W, C) or (B, H, W, C)."""
    height, width = spatial_shape(image_shape)
    check_divisible(height, width, self.patch_size, shape=image_shape)
    return height // self.patch_size, width // self.patch_size

  def _latents(self, images) -> jax.Array:
    """Checked images -> f32 quantizer inputs z [B, h, w, D]."""
    x_BHWC = prepare_images(images, factor=self.patch_size)
    patches_BhwP = patchify(x_BHWC.astype(jnp.float32), self.patch_size)
    return self.encoder(patches_BhwP).astype(jnp.float32)

  def encode(self, images, *, return_latents: bool = False):
    """Images [B, H, W, 3] -> indices [B, h, w, ...] (and quantized latents [B, h, w, Q])."""
    z_BhwD = self._latents(images)
    if return_latents:
      out = self.quantizer(z_BhwD, train=False)
      return out.indices, out.quantized
    return self.quantizer.encode(z_BhwD)

  def decode(self, indices) -> jax.Array:
    """Indices [B, h, w, ...] (as from encode, any grid) -> images [B, h*p, w*p, 3] f32."""
    if self.quantizer.codebook_size < 1:
      raise TypeError(f"{type(self.quantizer).__name__} has no discrete tokens (codebook_size "
                      f"0): decode its continuous latents with decode_latents")
    shape = tuple(np.shape(indices))
    if len(shape) < 3:
      raise ValueError(f"indices must be a token grid [B, h, w, ...]; got shape {shape}")
    check_tokens(indices, token_shape=shape[1:3], codebook_size=self.quantizer.codebook_size)
    codes = self.quantizer.indices_to_codes(jnp.asarray(indices))
    expected = (*shape[:3], self.quantizer.code_dim)
    if codes.shape != expected:
      raise ValueError(
          f"indices of shape {shape} do not match the quantizer's index layout: they map to "
          f"codes of shape {codes.shape}, expected {expected}. Pass indices shaped like "
          f"encode's output ([B, h, w], or [B, h, w, L] for residual / grouped quantizers)")
    return self.decode_latents(codes)

  def decode_latents(self, latents) -> jax.Array:
    """Quantized codes [B, h, w, Q] -> images [B, h*p, w*p, 3] float32."""
    shape = tuple(np.shape(latents))
    code_dim = self.quantizer.code_dim
    if len(shape) != 4 or shape[-1] != code_dim:
      raise ValueError(f"latents must be [B, h, w, {code_dim}] (the quantizer's code_dim); "
                       f"got shape {shape}")
    if not jnp.issubdtype(latents.dtype, jnp.floating):
      raise TypeError(f"latents must be floating point; got dtype {latents.dtype}")
    pixels_BhwP = self.decoder(latents).astype(jnp.float32)
    return unpatchify(pixels_BhwP, self.patch_size)

  def __call__(self, images, *, train: bool = False) -> TokenizerOutput:
    """Reconstruction [B, H, W, 3] f32 and the QuantizerOutput, for training."""
    quantizer_output = self.quantizer(self._latents(images), train=train)
    return TokenizerOutput(self.decode_latents(quantizer_output.quantized), quantizer_output)
