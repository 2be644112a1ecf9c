"""ViT-VQGAN-style tokenizer: Yu et al. 2021, "Vector-quantized Image Modeling with Improved
VQGAN" (patchify -> transformer -> low-dim codes -> quantizer -> transformer -> unpatchify).

Shape letters: B batch, H W image size, C channels, p patch size, h w = H/p W/p the token
grid, T = h*w tokens, E transformer width, D quantizer input_dim, Q quantizer code_dim.

As in the paper (Section 3.1), the encoder and the decoder each end in a two-layer
feed-forward with a tanh in the middle, and the encoder projects to a low-dimensional code
space (factorized codes, Section 3.2) where the quantizer runs; the quantizer is any module
from jaxtok/quantizers. Sizes follow the paper's Table 1 (S/B/L) plus a "tiny" one for tests.
"""

import dataclasses
from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers import rope as rope_lib
from jaxtok.layers.attention import Implementation
from jaxtok.layers.embed import dense, embedding_param
from jaxtok.layers.patchify import patchify, unpatchify
from jaxtok.layers.transformer import Transformer
from jaxtok.models.presets import Presets
from jaxtok.models.tokenizers.tokenizer import (
    Tokenizer, TokenizerOutput, check_divisible, check_tokens, prepare_images, spatial_shape)


@dataclasses.dataclass(frozen=True)
class ViTSize:
  """Width and depth of one ViT (encoder or decoder)."""

  width: int  # E
  depth: int  # number of transformer blocks
  num_heads: int
  mlp_dim: int


# ViT-VQGAN Table 1: Small 8 blocks x 512 (8 heads, MLP 2048); Base 12 x 768 (12, 3072);
# Large 32 x 1280 (16, 5120). "tiny" is for tests and demos.
VIT_SIZES = {
    "tiny": ViTSize(width=32, depth=2, num_heads=2, mlp_dim=64),
    "S": ViTSize(width=512, depth=8, num_heads=8, mlp_dim=2048),
    "B": ViTSize(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "L": ViTSize(width=1280, depth=32, num_heads=16, mlp_dim=5120),
}


def resolve_size(size: str | ViTSize, table: dict[str, ViTSize]) -> ViTSize:
  """A ViTSize from a name in `table` or a ViTSize itself."""
  if isinstance(size, ViTSize):
    return size
  if size not in table:
    raise ValueError(f"unknown size {size!r}; choose one of {sorted(table)} or pass a ViTSize")
  return table[size]


def codes_from_indices(quantizer: nn.Module, indices: jax.Array, grid_rank: int) -> jax.Array:
  """quantizer.indices_to_codes, refusing ids whose trailing axes this quantizer does not take
  (e.g. [B, T, L] residual ids given to a single-codebook quantizer)."""
  codes = quantizer.indices_to_codes(indices)
  if codes.ndim != 1 + grid_rank + 1:
    raise ValueError(
        f"indices have shape {tuple(indices.shape)}, which this quantizer "
        f"({type(quantizer).__name__}) maps to codes of shape {tuple(codes.shape)}; expected "
        f"{1 + grid_rank} leading axes [B, token grid] plus only the quantizer's own index axes")
  return codes


class _TanhHead(nn.Module):
  """The ViT-VQGAN output feed-forward: Dense(E) -> tanh -> Dense(features)."""

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BTE: jax.Array) -> jax.Array:
    h = nn.tanh(dense(x_BTE.shape[-1], "hidden", self.dtype, ("embed", "mlp"))(x_BTE))
    return dense(self.features, "out", self.dtype, ("mlp", None))(h)


class ViTTokenizer(Presets, Tokenizer):
  """ViT encoder -> Dense to quantizer.input_dim -> quantizer -> Dense -> ViT decoder.

  Tokens form an (H/p, W/p) grid. With learned positions the image size is fixed to
  `image_size`; with 2D RoPE any H, W divisible by p is accepted.
  """

  PRESETS = {
      # The paper's ViT-VQGAN-SS and -SL: a small encoder with a small or a large decoder,
      # patch 8 on 256x256 images (32x32 tokens); published with VQ 8192 x 32, l2-normalized.
      "ViT-VQGAN-SS": dict(encoder_size="S", decoder_size="S", patch_size=8, image_size=256),
      "ViT-VQGAN-SL": dict(encoder_size="S", decoder_size="L", patch_size=8, image_size=256),
      # For tests and CPU demos: 32x32 images, 8x8 tokens.
      "tiny": dict(encoder_size="tiny", decoder_size="tiny", patch_size=4, image_size=32),
  }

  quantizer: nn.Module  # any jaxtok quantizer, built by the caller
  encoder_size: str | ViTSize = "S"  # name in VIT_SIZES, or a ViTSize
  decoder_size: str | ViTSize = "S"
  patch_size: int = 8  # p; the paper uses 8 on 256x256 images (32x32 tokens)
  image_size: int = 256  # H = W; used only by learned positions
  channels: int = 3
  positions: Literal["learned", "rope2d"] = "learned"
  dropout_rate: float = 0.0  # residual dropout in both transformers when train=True
  dtype: jnp.dtype = jnp.float32  # compute dtype of the transformers (params stay f32)
  scan_layers: bool = True
  attention_implementation: Implementation = None

  def setup(self):
    enc = resolve_size(self.encoder_size, VIT_SIZES)
    dec = resolve_size(self.decoder_size, VIT_SIZES)
    if self.positions not in ("learned", "rope2d"):
      raise ValueError(f"positions must be 'learned' or 'rope2d'; got {self.positions!r}")

    def stack(size: ViTSize) -> Transformer:
      return Transformer(
          num_layers=size.depth, num_heads=size.num_heads, mlp_dim=size.mlp_dim,
          rope="2d" if self.positions == "rope2d" else None, dropout_rate=self.dropout_rate,
          dtype=self.dtype, scan_layers=self.scan_layers,
          attention_implementation=self.attention_implementation)

    self.patch_embed = dense(enc.width, "patch_embed", self.dtype)
    self.encoder = stack(enc)
    self.encoder_head = _TanhHead(self.quantizer.input_dim, self.dtype)
    self.decoder_embed = dense(dec.width, "decoder_embed", self.dtype)
    self.decoder = stack(dec)
    self.decoder_head = _TanhHead(self.patch_size**2 * self.channels, self.dtype)
    if self.positions == "learned":
      grid = self.image_size // self.patch_size
      self.encoder_pos = embedding_param(self, "encoder_pos", (grid * grid, enc.width), 0.02)
      self.decoder_pos = embedding_param(self, "decoder_pos", (grid * grid, dec.width), 0.02)

  # -- Tokenizer API ----------------------------------------------------------------------

  @property
  def downsample_factor(self) -> int:
    return self.patch_size

  def token_shape(self, image_shape: Sequence[int]) -> tuple[int, int]:
    height, width = spatial_shape(image_shape)
    self._check_image_size(height, width, image_shape)
    return height // self.patch_size, width // self.patch_size

  def encode(self, images: jax.Array, *, return_latents: bool = False):
    quantized = self.quantizer(self._encode_z(images, train=False), train=False)
    if return_latents:
      return quantized.indices, quantized.quantized
    return quantized.indices

  def decode(self, indices: jax.Array) -> jax.Array:
    grid = self._fixed_grid()
    if grid is None:  # RoPE: any grid; rank, dtype and range are checked
      shape = tuple(jnp.shape(indices))
      if len(shape) < 3:
        raise ValueError(f"indices must be a token grid [B, h, w, ...]; got shape {shape}")
      grid = shape[1:3]
    check_tokens(indices, token_shape=grid, codebook_size=self.quantizer.codebook_size)
    return self.decode_latents(codes_from_indices(self.quantizer, indices, 2))

  def decode_latents(self, latents: jax.Array, *, train: bool = False) -> jax.Array:
    """Quantized codes [B, h, w, Q] -> images [B, h*p, w*p, C] float32."""
    code_dim = self.quantizer.code_dim
    if latents.ndim != 4 or latents.shape[-1] != code_dim:
      raise ValueError(f"latents must be [B, h, w, {code_dim}]; got shape {latents.shape}")
    b, h, w, _ = latents.shape
    fixed = self._fixed_grid()
    if fixed is not None and (h, w) != fixed:
      raise ValueError(f"latents must have the token grid {fixed} of {self.image_size}px "
                       f"images (learned positions); got {(h, w)}")
    x_BTE = self.decoder_embed(latents.reshape(b, h * w, code_dim).astype(jnp.float32))
    x_BTE = self._add_positions(x_BTE.astype(jnp.float32), "decoder")
    x_BTE = self.decoder(x_BTE, positions=self._rope_positions(h, w), deterministic=not train)
    patches = self.decoder_head(x_BTE).astype(jnp.float32)
    return unpatchify(patches.reshape(b, h, w, -1), self.patch_size)

  def __call__(self, images: jax.Array, *, train: bool = False) -> TokenizerOutput:
    quantized = self.quantizer(self._encode_z(images, train=train), train=train)
    return TokenizerOutput(self.decode_latents(quantized.quantized, train=train), quantized)

  # -- internals --------------------------------------------------------------------------

  def _encode_z(self, images: jax.Array, *, train: bool) -> jax.Array:
    """Images -> quantizer inputs z [B, h, w, D] float32."""
    x = prepare_images(images, factor=self.patch_size, channels=self.channels)
    b, height, width, _ = x.shape
    self._check_image_size(height, width, x.shape)
    h, w = height // self.patch_size, width // self.patch_size
    patches_BTP = patchify(x.astype(jnp.float32), self.patch_size).reshape(b, h * w, -1)
    x_BTE = self.patch_embed(patches_BTP)
    x_BTE = self._add_positions(x_BTE.astype(jnp.float32), "encoder")
    x_BTE = self.encoder(x_BTE, positions=self._rope_positions(h, w), deterministic=not train)
    return self.encoder_head(x_BTE).astype(jnp.float32).reshape(b, h, w, -1)

  def _fixed_grid(self) -> tuple[int, int] | None:
    if self.positions != "learned":
      return None
    grid = self.image_size // self.patch_size
    return grid, grid

  def _check_image_size(self, height: int, width: int, shape) -> None:
    check_divisible(height, width, self.patch_size, shape=shape)
    if self.positions == "learned" and (height, width) != (self.image_size,) * 2:
      raise ValueError(
          f"images must be {self.image_size}x{self.image_size} (learned positions fix the "
          f"size; use positions='rope2d' for other sizes); got shape {tuple(shape)}")

  def _add_positions(self, x_BTE: jax.Array, which: str) -> jax.Array:
    if self.positions != "learned":
      return x_BTE
    pos_TE = self.encoder_pos if which == "encoder" else self.decoder_pos
    return x_BTE + pos_TE[None]

  def _rope_positions(self, h: int, w: int) -> jax.Array | None:
    return rope_lib.grid_positions(h, w) if self.positions == "rope2d" else None
