"""TiTok: Yu et al. 2024, "An Image is Worth 32 Tokens for Reconstruction and Generation".

A 1D tokenizer: K learned latent tokens read the image patches in the encoder ViT, and only
they reach the quantizer. The layout is bytedance/1d-tokenizer's single-stage form
(`is_legacy: False`) so that parameter counts, and hence converted weights, match the
published PyTorch models. Optional nested (prefix) token dropout trains the decoder on every
prefix of the tokens, so a prefix alone decodes.

Shape letters: B batch, K latent tokens, k a prefix length, T = h*w patches, E width, D
quantizer input_dim, Q its code_dim, P = p*p*3 pixels per patch.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers.attention import Implementation
from jaxtok.layers.embed import dense, embedding_param
from jaxtok.layers.patchify import patchify, unpatchify
from jaxtok.layers.transformer import Transformer
from jaxtok.models.presets import Presets
from jaxtok.models.tokenizers.tokenizer import (
    Tokenizer, TokenizerOutput, check_tokens, prepare_images, spatial_shape)
from jaxtok.models.tokenizers.vit import ViTSize, codes_from_indices, resolve_size

# TiTokEncoder/TiTokDecoder width, depth and heads; MLP ratio 4. "tiny" is for tests.
TITOK_SIZES = {
    "tiny": ViTSize(width=32, depth=2, num_heads=2, mlp_dim=128),
    "small": ViTSize(width=512, depth=8, num_heads=8, mlp_dim=2048),
    "base": ViTSize(width=768, depth=12, num_heads=12, mlp_dim=3072),
    "large": ViTSize(width=1024, depth=24, num_heads=16, mlp_dim=4096),
}

# The published quantizer: VQ with 4096 codes of 12 dims, l2-normalised, commitment 0.25.
CODEBOOK = dict(codebook_size=4096, code_dim=12)

_LN_EPS = 1e-5  # PyTorch nn.LayerNorm's default, as in the reference
PIXEL_RANGES = ("symmetric", "unit")


def _stack(size: ViTSize, dtype, scan_layers: bool, implementation) -> Transformer:
  # final_norm is the reference's ln_post (per-token, so applying it before slicing is equal).
  return Transformer(
      num_layers=size.depth, num_heads=size.num_heads, mlp_dim=size.mlp_dim,
      norm_epsilon=_LN_EPS, mlp_activation="gelu", dtype=dtype, scan_layers=scan_layers,
      attention_implementation=implementation, name="transformer")


class TiTokEncoder(nn.Module):
  """Images [B, H, W, 3] (checked, in [-1, 1]) -> latent-token features z [B, K, D] f32."""

  size: ViTSize
  patch_size: int
  grid: int  # h = w = image_size // patch_size
  num_latent_tokens: int  # K
  out_dim: int  # D, the quantizer's input_dim
  # The released two-stage checkpoints (1d-tokenizer `is_legacy: True`) reshape the K x E
  # latent outputs to E x K without a transpose before conv_out; True reproduces that.
  legacy_token_layout: bool = False
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = True
  attention_implementation: Implementation = None

  @nn.compact
  def __call__(self, images_BHWC: jax.Array) -> jax.Array:
    width, t, k = self.size.width, self.grid**2, self.num_latent_tokens
    scale = width**-0.5  # the reference's init scale for its embeddings
    b = images_BHWC.shape[0]
    patches_BTP = patchify(images_BHWC, self.patch_size).reshape(b, t, -1)
    x_BTE = dense(width, "patch_embed", self.dtype)(patches_BTP)
    cls_1E = embedding_param(self, "class_embedding", (1, width), scale)
    pos = embedding_param(self, "positional_embedding", (t + 1, width), scale)
    latents_KE = embedding_param(self, "latent_tokens", (k, width), scale)
    latent_pos = embedding_param(self, "latent_token_positional_embedding", (k, width), scale)

    x = jnp.concatenate([jnp.broadcast_to(cls_1E, (b, 1, width)),
                         x_BTE.astype(jnp.float32)], axis=1) + pos[None]
    latents = jnp.broadcast_to(latents_KE + latent_pos, (b, k, width))
    x = jnp.concatenate([x, latents], axis=1)  # [B, 1 + T + K, E]
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=jnp.float32, name="ln_pre")(x)
    x = _stack(self.size, self.dtype, self.scan_layers, self.attention_implementation)(x)
    latents_BKE = x[:, 1 + t:]
    if self.legacy_token_layout:  # token k reads flat[e * K + k] of the row-major K x E block
      latents_BKE = latents_BKE.reshape(b, width, k).transpose(0, 2, 1)
    z_BKD = dense(self.out_dim, "conv_out", self.dtype, ("embed", None))(latents_BKE)
    return z_BKD.astype(jnp.float32)


class TiTokDecoder(nn.Module):
  """Codes [B, k, Q] (k <= K) and a keep mask [B, K] -> images [B, H, W, 3] f32, or, with
  `code_classes` V, logits [B, h, w, V] over a pixel tokenizer's codes (two-stage TiTok)."""

  size: ViTSize
  patch_size: int
  grid: int
  num_latent_tokens: int
  code_classes: int | None = None  # V: predict V-way code logits per patch instead of pixels
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = True
  attention_implementation: Implementation = None

  @nn.compact
  def __call__(self, codes_BkQ: jax.Array, keep_BK: jax.Array | None = None) -> jax.Array:
    width, t, k_max = self.size.width, self.grid**2, self.num_latent_tokens
    scale = width**-0.5
    b, k = codes_BkQ.shape[:2]
    cls_1E = embedding_param(self, "class_embedding", (1, width), scale)
    pos = embedding_param(self, "positional_embedding", (t + 1, width), scale)
    mask_token_E = embedding_param(self, "mask_token", (width,), scale)
    latent_pos = embedding_param(self, "latent_token_positional_embedding", (k_max, width),
                                 scale)

    tokens_BkE = dense(width, "decoder_embed", self.dtype)(codes_BkQ.astype(jnp.float32))
    tokens_BKE = jnp.concatenate(  # a prefix is padded with mask tokens up to K
        [tokens_BkE.astype(jnp.float32),
         jnp.broadcast_to(mask_token_E, (b, k_max - k, width))], axis=1)
    if keep_BK is not None:  # nested dropout: positions >= k_b become mask tokens
      tokens_BKE = jnp.where(keep_BK[..., None], tokens_BKE, mask_token_E[None, None])
    queries = jnp.concatenate([jnp.broadcast_to(cls_1E, (b, 1, width)),
                               jnp.broadcast_to(mask_token_E, (b, t, width))], axis=1)
    queries = queries + pos[None]
    x = jnp.concatenate([queries, tokens_BKE + latent_pos[None]], axis=1)  # [B, 1 + T + K, E]
    x = nn.LayerNorm(epsilon=_LN_EPS, dtype=jnp.float32, name="ln_pre")(x)
    x = _stack(self.size, self.dtype, self.scan_layers, self.attention_implementation)(x)
    if self.code_classes is not None:  # the reference's 1x1 convs W -> 2W, tanh, 2W -> V
      h = jnp.tanh(dense(2 * width, "ffn_hidden", self.dtype)(x[:, 1:1 + t]))
      logits_BTV = dense(self.code_classes, "ffn_out", self.dtype, ("mlp", None))(h)
      return logits_BTV.astype(jnp.float32).reshape(b, self.grid, self.grid, -1)
    pixels_BTP = dense(self.patch_size**2 * 3, "ffn", self.dtype, ("embed", None))(x[:, 1:1 + t])
    pixels_BhwP = pixels_BTP.astype(jnp.float32).reshape(b, self.grid, self.grid, -1)
    image = unpatchify(pixels_BhwP, self.patch_size)
    conv_out = nn.Conv(3, (3, 3), padding="SAME", name="conv_out",
                       kernel_init=nn.with_logical_partitioning(
                           nn.initializers.lecun_normal(), (None, None, None, None)),
                       bias_init=nn.with_logical_partitioning(
                           nn.initializers.zeros_init(), (None,)))
    return conv_out(image).astype(jnp.float32)


class TiTok(Presets, Tokenizer):
  """TiTok 1D tokenizer: images -> K tokens -> images; any prefix of the tokens decodes.

  The encoder ViT reads [class token, h*w patches, K latent tokens]; only the K latent tokens
  leave it, projected to the quantizer's input_dim. The decoder ViT reads [class token, h*w
  mask tokens, K embedded codes] and turns its h*w patch outputs into RGB patches, then a 3x3
  conv. Blocks are the reference's (modeling/modules/blocks.py TiTokEncoder / TiTokDecoder):
  pre-norm CLIP-style (LayerNorm eps 1e-5, exact GELU, MLP 4x), ln_pre before the stack,
  ln_post after it.

  Nested token dropout (FlexTok, Bachmann et al. 2025; One-D-Piece, Miwa et al. 2025): with
  `prefix_dropout_min_tokens` set and train=True, each example draws k uniformly from
  [min_tokens, K] (rng stream "dropout") and decoder inputs at positions >= k become the mask
  token. `decode` accepts any prefix of 1 <= k <= K tokens and fills the rest the same way.

  `TiTok.from_preset("L-32", quantizer=q)` builds a published size; `CODEBOOK` is the
  quantizer it was published with. The released single-stage VQ / VAE checkpoints convert to
  this class with `pixel_range="unit"` (`jaxtok convert`); the released two-stage S-128 / B-64
  / L-32 ones to `titok_two_stage.TiTokTwoStage`.
  """

  # Published sizes; all use patch 16 on 256x256 images.
  PRESETS = {
      "S-128": dict(encoder_size="small", decoder_size="small", num_latent_tokens=128),
      "B-64": dict(encoder_size="base", decoder_size="base", num_latent_tokens=64),
      "L-32": dict(encoder_size="large", decoder_size="large", num_latent_tokens=32),
  }

  quantizer: nn.Module  # any jaxtok quantizer, built by the caller
  image_size: int = 256  # H = W (learned positions fix it)
  patch_size: int = 16
  num_latent_tokens: int = 32  # K
  encoder_size: str | ViTSize = "large"  # name in TITOK_SIZES, or a ViTSize
  decoder_size: str | ViTSize = "large"
  prefix_dropout_min_tokens: int | None = None  # None: off; else train on prefixes k >= this
  # "unit": the network's own pixels are in [0, 1] (the released checkpoints); images in and
  # out of the API stay in [-1, 1], mapped at the edges. "symmetric": [-1, 1] throughout.
  pixel_range: str = "symmetric"
  legacy_token_layout: bool = False  # see TiTokEncoder (the released two-stage checkpoints)
  dtype: jnp.dtype = jnp.float32  # compute dtype of the transformers (params stay f32)
  scan_layers: bool = True
  attention_implementation: Implementation = None

  def setup(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"image_size {self.image_size} must be divisible by patch_size "
                       f"{self.patch_size}")
    if self.pixel_range not in PIXEL_RANGES:
      raise ValueError(f"pixel_range must be one of {PIXEL_RANGES}; got {self.pixel_range!r}")
    min_tokens = self.prefix_dropout_min_tokens
    if min_tokens is not None and not 1 <= min_tokens <= self.num_latent_tokens:
      raise ValueError(f"prefix_dropout_min_tokens must be in [1, {self.num_latent_tokens}] "
                       f"or None; got {min_tokens}")
    common = dict(patch_size=self.patch_size, grid=self.image_size // self.patch_size,
                  num_latent_tokens=self.num_latent_tokens, dtype=self.dtype,
                  scan_layers=self.scan_layers,
                  attention_implementation=self.attention_implementation)
    self.encoder = TiTokEncoder(size=resolve_size(self.encoder_size, TITOK_SIZES),
                                out_dim=self.quantizer.input_dim,
                                legacy_token_layout=self.legacy_token_layout, **common)
    self.decoder = TiTokDecoder(size=resolve_size(self.decoder_size, TITOK_SIZES),
                                code_classes=self._code_classes(), **common)

  def _code_classes(self) -> int | None:
    return None  # the single-stage decoder predicts pixels

  # -- Tokenizer API ----------------------------------------------------------------------

  @property
  def downsample_factor(self) -> int:
    return self.patch_size

  def token_shape(self, image_shape: Sequence[int]) -> tuple[int]:
    self._check_image_size(spatial_shape(image_shape), image_shape)
    return (self.num_latent_tokens,)

  def encode(self, images: jax.Array, *, return_latents: bool = False):
    quantized = self.quantizer(self._encode_z(images), train=False)
    if return_latents:
      return quantized.indices, quantized.quantized
    return quantized.indices

  def decode(self, indices: jax.Array) -> jax.Array:
    """Token ids [B, k, ...] for any prefix 1 <= k <= K -> images [B, H, W, 3] float32."""
    check_tokens(indices, token_shape=(self.num_latent_tokens,),
                 codebook_size=self.quantizer.codebook_size, allow_prefix=True)
    return self.decode_latents(codes_from_indices(self.quantizer, indices, 1))

  def decode_latents(self, latents: jax.Array) -> jax.Array:
    """Quantized codes [B, k, Q] (1 <= k <= K) -> images [B, H, W, 3] float32."""
    code_dim, k_max = self.quantizer.code_dim, self.num_latent_tokens
    if latents.ndim != 3 or latents.shape[-1] != code_dim or not 1 <= latents.shape[1] <= k_max:
      raise ValueError(f"latents must be [B, k, {code_dim}] with 1 <= k <= {k_max}; "
                       f"got shape {latents.shape}")
    return self._images(latents)

  def __call__(self, images: jax.Array, *, train: bool = False) -> TokenizerOutput:
    quantized = self.quantizer(self._encode_z(images), train=train)
    keep_BK = None
    if train and self.prefix_dropout_min_tokens is not None:
      b = quantized.quantized.shape[0]
      keep_BK = prefix_keep_mask(self.make_rng("dropout"), b, self.num_latent_tokens,
                                 self.prefix_dropout_min_tokens)
    return TokenizerOutput(self._images(quantized.quantized, keep_BK), quantized)

  # -- internals --------------------------------------------------------------------------

  def _encode_z(self, images: jax.Array) -> jax.Array:
    x = prepare_images(images, factor=self.patch_size, channels=3).astype(jnp.float32)
    self._check_image_size(x.shape[1:3], x.shape)
    return self.encoder((x + 1.0) * 0.5 if self.pixel_range == "unit" else x)

  def _images(self, codes_BkQ: jax.Array, keep_BK: jax.Array | None = None) -> jax.Array:
    """Decoder output in the API's [-1, 1] range."""
    images = self.decoder(codes_BkQ, keep_BK)
    return images * 2.0 - 1.0 if self.pixel_range == "unit" else images

  def _check_image_size(self, hw: Sequence[int], shape) -> None:
    if tuple(hw) != (self.image_size, self.image_size):
      raise ValueError(
          f"images must be {self.image_size}x{self.image_size} (TiTok's learned positions fix "
          f"the size; H and W divisible by patch {self.patch_size}); got shape {tuple(shape)}")


def prefix_keep_mask(rng: jax.Array, batch: int, num_tokens: int,
                     min_tokens: int) -> jax.Array:
  """Bool [B, K]: True at positions < k_b, with k_b ~ Uniform{min_tokens, ..., K} per example."""
  k_B = jax.random.randint(rng, (batch,), min_tokens, num_tokens + 1)
  return jnp.arange(num_tokens)[None, :] < k_B[:, None]

