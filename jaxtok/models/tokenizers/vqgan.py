"""CNN VQGAN tokenizer (Esser et al. 2021) in the taming / LlamaGen layout, with any quantizer.

encoder -> quant_conv (1x1, z_channels -> quantizer.input_dim) -> quantizer
        -> post_quant_conv (1x1, quantizer.code_dim -> z_channels) -> decoder

Module and parameter names follow LlamaGen's vq_model.py, and MaskGIT's VQGAN is the same
network under other options (preset "maskgit-f16"), so both families' published weights
convert by renaming (and, from PyTorch, transposing); see `VQGAN` for the name mapping.

Shape letters: B batch, H W image size, h w latent grid (H/f, W/f), D quantizer input_dim,
E quantizer code_dim, Z z_channels.
"""

import dataclasses
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok.layers.conv import (AttnBlock, Downsample, GroupNorm, ResnetBlock, Upsample,
                                conv2d, swish)
from jaxtok.models.presets import Presets
from jaxtok.models.tokenizers.tokenizer import GridTokenizer, prepare_images

Dtype = Any


@dataclasses.dataclass(frozen=True)
class VQGANConfig:
  """Architecture of the encoder/decoder (the quantizer is a separate module)."""

  ch: int = 128  # base channels; every width (ch * mult) must be divisible by 32 (GroupNorm)
  ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # width multiplier per level; f = 2**(levels-1)
  num_res_blocks: int = 2  # ResnetBlocks per encoder level
  decoder_res_blocks: int = 3  # per decoder level: taming / LlamaGen num_res_blocks + 1
  attention: bool = True  # AttnBlock after each lowest-level ResnetBlock and mid-block
  # False: the decoder's lowest level has no AttnBlocks (LDM's AutoencoderKL, MAR's KL-16:
  # attn_resolutions only in its encoder); the middle keeps its AttnBlock.
  decoder_level_attention: bool = True
  z_channels: int = 256  # channels between encoder/decoder and quant_conv/post_quant_conv
  # 1x1 quant_conv / post_quant_conv around the quantizer. False (MaskGIT): the encoder emits
  # quantizer.input_dim channels and the decoder takes quantizer.code_dim; z_channels unused.
  quant_conv: bool = True
  # True (LDM's double_z): the encoder emits 2 * z_channels (a KL posterior's mean and logvar)
  # and quant_conv maps them; post_quant_conv and the decoder keep z_channels.
  double_z: bool = False
  quant_conv_kernel: int = 1  # kernel of quant_conv / post_quant_conv (VAR's VQVAE: 3)
  encoder_out_kernel: int = 3  # kernel of encoder.conv_out (MaskGIT: 1)
  conv_bias: bool = True  # biases in ResnetBlock convs and encoder.conv_in (MaskGIT: none)
  shortcut_from_output: bool = False  # MaskGIT's ResBlock quirk, see layers.conv.ResnetBlock
  downsample: Literal["conv", "avgpool"] = "conv"  # encoder resampling (MaskGIT: avgpool)
  in_channels: int = 3  # image channels in
  out_channels: int = 3  # image channels out
  # "unit": the network's own pixels are in [0, 1] (MaskGIT's released weights); the API stays
  # in [-1, 1], mapped at the edges. "symmetric": [-1, 1] throughout.
  pixel_range: Literal["symmetric", "unit"] = "symmetric"
  # Recompute every ResnetBlock in the backward pass (jax.checkpoint) instead of keeping its
  # activations: same parameters and outputs; the VQ-16 train step's peak memory drops about
  # 3.5x for 12 % more FLOPs (benchmarks/results/roofline.md, XLA's CPU estimates).
  remat: bool = False

  @property
  def downsample_factor(self) -> int:
    return 2 ** (len(self.ch_mult) - 1)


def _resnet_block(config: VQGANConfig) -> type[nn.Module]:
  """ResnetBlock, under nn.remat when config.remat (parameter names unchanged)."""
  return nn.remat(ResnetBlock) if config.remat else ResnetBlock


class _Level(nn.Module):
  """One resolution level: ResnetBlocks (each followed by an AttnBlock if `attention`),
  then an optional Downsample / Upsample. Children are named as LlamaGen's."""

  features: int
  num_blocks: int
  attention: bool
  resample: Literal["down", "up"] | None
  config: VQGANConfig
  dtype: Dtype

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    cfg = self.config
    for j in range(self.num_blocks):
      block = _resnet_block(cfg)
      x_BHWC = block(self.features, conv_bias=cfg.conv_bias,
                     shortcut_from_output=cfg.shortcut_from_output, dtype=self.dtype,
                     name=f"res_{j}")(x_BHWC)
      if self.attention:
        x_BHWC = AttnBlock(dtype=self.dtype, name=f"attn_{j}")(x_BHWC)
    if self.resample == "down":
      x_BHWC = Downsample(cfg.downsample, dtype=self.dtype, name="downsample")(x_BHWC)
    elif self.resample == "up":
      x_BHWC = Upsample(dtype=self.dtype, name="upsample")(x_BHWC)
    return x_BHWC


def _middle(x_BHWC, config: VQGANConfig, dtype: Dtype) -> jax.Array:
  """ResnetBlock, AttnBlock (if config.attention), ResnetBlock: `mid_0`, `mid_1`, ..."""
  width = x_BHWC.shape[-1]
  blocks = ["res", "attn", "res"] if config.attention else ["res", "res"]
  for i, kind in enumerate(blocks):
    if kind == "res":
      block = _resnet_block(config)
      x_BHWC = block(width, conv_bias=config.conv_bias,
                     shortcut_from_output=config.shortcut_from_output, dtype=dtype,
                     name=f"mid_{i}")(x_BHWC)
    else:
      x_BHWC = AttnBlock(dtype=dtype, name=f"mid_{i}")(x_BHWC)
  return x_BHWC


class Encoder(nn.Module):
  """Images [B, H, W, in_channels] -> features [B, H/f, W/f, out_features]."""

  config: VQGANConfig
  out_features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    cfg = self.config
    levels = len(cfg.ch_mult)
    h = conv2d(cfg.ch, 3, use_bias=cfg.conv_bias, dtype=self.dtype, in_axis=None,
               name="conv_in")(x_BHWC)
    for i, mult in enumerate(cfg.ch_mult):
      h = _Level(cfg.ch * mult, cfg.num_res_blocks, cfg.attention and i == levels - 1,
                 "down" if i < levels - 1 else None, cfg, self.dtype,
                 name=f"conv_blocks_{i}")(h)
    h = _middle(h, cfg, self.dtype)
    h = swish(GroupNorm(dtype=self.dtype, name="norm_out")(h))
    # Without quant_conv this emits the quantizer's few channels: keep them unsplit.
    return conv2d(self.out_features, cfg.encoder_out_kernel, dtype=self.dtype,
                  out_axis="conv_out" if cfg.quant_conv else None, name="conv_out")(h)


class Decoder(nn.Module):
  """Latent features [B, h, w, C] -> images [B, h*f, w*f, out_channels] (compute dtype)."""

  config: VQGANConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z_BhwC: jax.Array) -> jax.Array:
    cfg = self.config
    levels = len(cfg.ch_mult)
    h = conv2d(cfg.ch * cfg.ch_mult[-1], 3, dtype=self.dtype,
               in_axis="conv_in" if cfg.quant_conv else None, name="conv_in")(z_BhwC)
    h = _middle(h, cfg, self.dtype)
    for n, i in enumerate(reversed(range(levels))):  # n: LlamaGen's index, 0 = lowest res
      h = _Level(cfg.ch * cfg.ch_mult[i], cfg.decoder_res_blocks,
                 cfg.attention and cfg.decoder_level_attention and i == levels - 1,
                 "up" if i > 0 else None, cfg, self.dtype, name=f"conv_blocks_{n}")(h)
    h = swish(GroupNorm(dtype=self.dtype, name="norm_out")(h))
    return conv2d(cfg.out_channels, 3, dtype=self.dtype, out_axis=None, name="conv_out")(h)


class VQGAN(Presets, GridTokenizer):
  """CNN encoder-quantizer-decoder tokenizer; see the module docstring and tokenizer.py.

  Indices are whatever `quantizer.encode` returns on the [B, h, w, D] latent grid: [B, h, w]
  for one codebook, [B, h, w, L] / [B, h, w, G] for residual / grouped quantizers.

  `VQGAN.from_preset(name, quantizer=q, config={"ch": 32})` builds a preset (config entries
  in the mapping replace the preset's). The comment on each preset names the quantizer it was
  published with: build that and pass it as `quantizer=`.

  Weight names. LlamaGen (FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py):
  PyTorch's list index becomes a suffix, `encoder.conv_blocks.2.res.1.conv1.weight` is
  `encoder/conv_blocks_2/res_1/conv1/kernel` (transposed to [kh, kw, in, out]), `mid.1` is
  `mid_1`, GroupNorm `weight` is `scale`; the decoder's `conv_blocks_0` is, as there, the
  lowest resolution level; `quantize.embedding.weight` lives in the quantizer submodule.
  MaskGIT (google-research/maskgit nets/vqgan_tokenizer.py) uses Flax auto names: encoder
  `Conv_0` (conv_in), `ResBlock_{n}` numbered across levels (then the two middle blocks), each
  with `GroupNorm_0/1`, `Conv_0/1` (conv1/2) and `Conv_2` (nin_shortcut), then `GroupNorm_0`
  (norm_out) and `Conv_1` (conv_out); decoder `Conv_0` (conv_in), middle then level
  `ResBlock_{n}`, `Conv_{1..4}` (the upsample convs, lowest resolution first), `GroupNorm_0`,
  `Conv_5` (conv_out); quantizer `codebook`. Its kernels are already HWIO.
  """

  PRESETS = {
      # LlamaGen VQ-16 (Sun et al. 2024): f16, VQ 16384 x 8 l2-normalized; 71,883,403 params.
      "llamagen-vq16": {"config": VQGANConfig()},
      # LlamaGen VQ-8: f8, VQ 16384 x 8 l2-normalized; 70,109,835 params.
      "llamagen-vq8": {"config": VQGANConfig(ch_mult=(1, 2, 2, 4))},
      # MaskGIT VQGAN (Chang et al. 2022): f16, VQ 1024 x 256 (not normalized), no attention;
      # 54,515,587 params.
      "maskgit-f16": {"config": VQGANConfig(
          decoder_res_blocks=2, attention=False, quant_conv=False, encoder_out_kernel=1,
          conv_bias=False, shortcut_from_output=True, downsample="avgpool")},
      # taming-transformers VQGAN ImageNet f16 (Esser et al. 2021): LlamaGen's network, with
      # VQ 1024 or 16384 x 256 (not normalized); 72,141,699 / 76,073,859 params.
      "taming-f16": {"config": VQGANConfig()},
      # For tests and CPU demos: f2 (two levels), about 0.6 M params.
      "tiny": {"config": VQGANConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1,
                                     decoder_res_blocks=1, z_channels=32)},
  }

  quantizer: nn.Module  # any jaxtok quantizer (input_dim, code_dim, codebook_size, encode, ...)
  config: VQGANConfig = VQGANConfig()
  dtype: Dtype = jnp.float32  # compute dtype; params are f32; the quantizer always sees f32

  def setup(self):
    cfg = self.config
    widths = [cfg.ch * m for m in cfg.ch_mult]
    if cfg.pixel_range not in ("symmetric", "unit"):
      raise ValueError(f"config.pixel_range must be 'symmetric' or 'unit'; got "
                       f"{cfg.pixel_range!r}")
    if any(w % 32 for w in widths):
      raise ValueError(f"every level width ch * ch_mult must be divisible by 32 (GroupNorm "
                       f"groups); got ch={cfg.ch}, ch_mult={cfg.ch_mult} -> {widths}")
    latent_out = (cfg.z_channels * (2 if cfg.double_z else 1) if cfg.quant_conv
                  else self.quantizer.input_dim)
    self.encoder = Encoder(cfg, latent_out, dtype=self.dtype)
    if cfg.quant_conv:
      # The quantizer's side is thin (a few channels): replicated, never split by the mesh.
      k = cfg.quant_conv_kernel
      self.quant_conv = conv2d(self.quantizer.input_dim, k, dtype=self.dtype, out_axis=None)
      self.post_quant_conv = conv2d(cfg.z_channels, k, dtype=self.dtype, in_axis=None)
    self.decoder = Decoder(cfg, dtype=self.dtype)

  @property
  def downsample_factor(self) -> int:
    return self.config.downsample_factor

  def _latents(self, images) -> jax.Array:
    """Checked images -> f32 latents z [B, h, w, D] for the quantizer."""
    x_BHWC = prepare_images(images, factor=self.downsample_factor,
                            channels=self.config.in_channels)
    if self.config.pixel_range == "unit":
      x_BHWC = (x_BHWC.astype(jnp.float32) + 1.0) * 0.5
    z = self.encoder(x_BHWC.astype(self.dtype))
    if self.config.quant_conv:
      z = self.quant_conv(z)
    return z.astype(jnp.float32)

  def _pixels(self, codes_BhwE: jax.Array) -> jax.Array:
    """Quantized codes [B, h, w, E] -> images [B, h*f, w*f, 3]."""
    h = codes_BhwE.astype(self.dtype)
    if self.config.quant_conv:
      h = self.post_quant_conv(h)
    if self.config.pixel_range == "unit":
      return self.decoder(h).astype(jnp.float32) * 2.0 - 1.0
    return self.decoder(h)
