"""MAR's KL-16 VAE (`kl16.ckpt`, released by LTH14/mar; LDM's AutoencoderKL, models/vae.py)
-> jaxtok `VQGAN` preset "taming-f16" with a `KLQuantizer` of 16 channels.

The file holds {"model": state dict} (vae.py's init_from_ckpt reads ["model"], loading with
strict=False, so LDM's `loss.*` training tensors, where present, are dropped). LDM's Encoder /
Decoder are taming's under the same names (see `taming`), with three differences that the
config expresses: the encoder emits 2 * embed_dim channels (double_z: the posterior's mean and
logvar), quant_conv maps them to mean and logvar [2 * 16] (KLQuantizer's input, split in the
same order and clamped to [-30, 20] as DiagonalGaussianDistribution), post_quant_conv keeps
16 channels for the decoder (z_channels 16), and the decoder has no attention at its lowest
level (attn_resolutions only in the encoder; decoder_level_attention False). Pixels are in
[-1, 1] as jaxtok's.

MAR feeds its transformer the posterior *sample* times vae_scale_factor 0.2325 in training
(engine_mar.py) and decodes `sampled_tokens / 0.2325`: the MAR exports carry that factor as
`latent_scale` (see `mar`); the tokenizer's latents here are unscaled (mean when not training).
"""

from jaxtok import build
from jaxtok.convert import taming
from jaxtok.convert.common import Source, Weights
from jaxtok.models.tokenizers.vqgan import VQGAN

# kl16.ckpt's fields beyond the "taming-f16" preset: what `build_kl16` reads off its shapes.
KL16 = {"z_channels": 16, "double_z": True, "decoder_level_attention": False}
EMBED_DIM = 16


def kl16_config(image_size: int = 256, overrides: dict | None = None,
                embed_dim: int = EMBED_DIM) -> dict:
  """The jaxtok run config of the KL-16 VAE (or, with `overrides` of the preset's VQGANConfig
  and `embed_dim`, another AutoencoderKL) tokenizing `image_size` squares."""
  model = {"name": "vqgan.VQGAN", "preset": taming.PRESET,
           "config": dict(KL16 if overrides is None else overrides)}
  return {"trainer": "tokenizer", "seed": 0, "model": model,
          "quantizer": {"name": "kl.KLQuantizer", "dim": int(embed_dim)},
          "data": {"image_size": int(image_size)}, "train": {"compute_dtype": "float32"}}


def kl_fields(w: Weights) -> tuple[dict, int]:
  """(VQGANConfig entries, embed_dim) read off an AutoencoderKL state dict's shapes."""
  found = taming.vqgan_fields(w)  # z_channels there: quant_conv's input, 2 * embed_dim here
  embed_dim = w.shape("post_quant_conv.weight")[0]
  moments = w.shape("quant_conv.weight")[0]
  if moments != 2 * embed_dim:
    raise ValueError(f"{w.where}: quant_conv.weight must emit 2 * embed_dim = {2 * embed_dim} "
                     f"channels (a variational AutoencoderKL: mean and logvar); got {moments}")
  z_channels = w.shape("decoder.conv_in.weight")[1]
  found["z_channels"] = z_channels
  found["double_z"] = w.shape("encoder.conv_out.weight")[0] == 2 * z_channels
  lowest = len(found["ch_mult"]) - 1
  found["decoder_level_attention"] = f"decoder.up.{lowest}.attn.0.q.weight" in w
  return found, embed_dim


def build_kl16(w: Weights, *, image_size: int = 256) -> tuple[dict, dict]:
  """An AutoencoderKL state dict (kl16.ckpt) -> (tokenizer run config, variables)."""
  found, embed_dim = kl_fields(w)
  preset = VQGAN.PRESETS[taming.PRESET]["config"]
  overrides = {k: v for k, v in found.items() if getattr(preset, k) != v}
  config = kl16_config(256, overrides, embed_dim)
  tokenizer = build.tokenizer(config["model"], config["quantizer"])
  factor = tokenizer.downsample_factor
  if (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < factor
      or image_size % factor):
    raise ValueError(f"image_size must be a positive multiple of the downsampling factor "
                     f"{factor}; got {image_size!r}")
  config["data"]["image_size"] = image_size
  w.ignore("loss.*")  # LDM's training loss (discriminator, LPIPS), where saved
  return config, {"params": taming.vqgan_params(w, tokenizer)}


SOURCES = (
    Source("mar-kl16", ("kl16.ckpt",),
           "MAR's KL-16 VAE (LTH14/mar, LDM AutoencoderKL), f16, 16-channel continuous "
           "latents (KLQuantizer), 66.5 M params", build_kl16, options=("image_size",)),
)
