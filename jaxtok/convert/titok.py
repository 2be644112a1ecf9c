"""TiTok tokenizers of bytedance/1d-tokenizer -> jaxtok TiTok exports.

- Two-stage (TiTok-S-128 / B-64 / L-32, `tokenizer_titok_{s128,b64,l32}.bin`): the decoder
  predicts MaskGIT-VQGAN codes, turned into pixels by the MaskGIT VQGAN decoder stored in the
  same file (`pixel_decoder.*`, `pixel_quantize.*`): jaxtok `titok_two_stage.TiTokTwoStage`.
- Single stage (`is_legacy: False`): the VQ ones (`tokenizer_titok_{bl64,bl128,sl256}_vq8k`,
  8192 codes of 64 dims, no l2 norm) and the VAE ones (`*_vae_c16`, 16 channels): jaxtok
  `titok.TiTok` with a `VectorQuantizer` or a `KLQuantizer`.

The released networks take and give [0, 1] pixels; the exports keep jaxtok's [-1, 1] API
(`pixel_range="unit"`). Widths, depths, tokens, patch and image size are read from the
weights' shapes; the ViT sizes must be ones of `titok.TITOK_SIZES` (their head counts are not
in the weights). PyTorch's nn.MultiheadAttention `in_proj_weight` is split into query, key
and value; layers are stacked for the scanned transformer.
"""

import functools
import re

import numpy as np

from jaxtok.convert import maskgit
from jaxtok.convert.common import Source, Weights, conv, linear, nest, stack
from jaxtok.models.tokenizers.titok import TITOK_SIZES
from jaxtok.models.tokenizers.titok_two_stage import MASKGIT_VQGAN

MODES = ("two_stage", "vq", "vae")


def _size_name(w: Weights, prefix: str) -> str:
  """The TITOK_SIZES name of the ViT under `prefix` ("encoder." / "decoder."), from shapes."""
  width = w.arrays[f"{prefix}class_embedding"].shape[-1]
  depth = len({m.group(1) for k in w.keys(f"{prefix}transformer.*")
               if (m := re.match(rf"{re.escape(prefix)}transformer\.(\d+)\.", k))})
  mlp = w.arrays[f"{prefix}transformer.0.mlp.c_fc.weight"].shape[0]
  for name, size in TITOK_SIZES.items():
    if (size.width, size.depth, size.mlp_dim) == (width, depth, mlp):
      return name
  raise ValueError(f"{w.where}: the {prefix.rstrip('.')} ViT (width {width}, {depth} layers, "
                   f"MLP {mlp}) is none of TiTok's sizes {sorted(TITOK_SIZES)}")


def _vit(w: Weights, prefix: str, dst: str, size: str) -> dict:
  """The transformer layers (stacked over layers), ln_pre and ln_post of one ViT."""
  s = TITOK_SIZES[size]
  heads, head_dim = s.num_heads, s.width // s.num_heads
  layers = []
  for i in range(s.depth):
    p = f"{prefix}transformer.{i}."
    qkv = w.take(f"{p}attn.in_proj_weight", shape=(3 * s.width, s.width))
    qkv_bias = w.take(f"{p}attn.in_proj_bias")
    layer = {}
    for j, name in enumerate(("query", "key", "value")):
      rows = slice(j * s.width, (j + 1) * s.width)
      layer[f"attn/{name}/kernel"] = qkv[rows].T.reshape(s.width, heads, head_dim)
      layer[f"attn/{name}/bias"] = qkv_bias[rows].reshape(heads, head_dim)
    layer["attn/out/kernel"] = w.take(f"{p}attn.out_proj.weight").T.reshape(
        heads, head_dim, s.width)
    layer["attn/out/bias"] = w.take(f"{p}attn.out_proj.bias")
    for src, name in (("ln_1", "attn_norm"), ("ln_2", "mlp_norm")):
      layer[f"{name}/scale"] = w.take(f"{p}{src}.weight")
      layer[f"{name}/bias"] = w.take(f"{p}{src}.bias")
    for src, name in (("c_fc", "wi"), ("c_proj", "wo")):
      layer[f"mlp/{name}/kernel"] = w.take(f"{p}mlp.{src}.weight", linear)
      layer[f"mlp/{name}/bias"] = w.take(f"{p}mlp.{src}.bias")
    layers.append(layer)
  out = {f"{dst}/transformer/layers/{k}": stack([layer[k] for layer in layers])
         for k in layers[0]}
  for src, name in (("ln_pre", "ln_pre"), ("ln_post", "transformer/final_norm")):
    out[f"{dst}/{name}/scale"] = w.take(f"{prefix}{src}.weight")
    out[f"{dst}/{name}/bias"] = w.take(f"{prefix}{src}.bias")
  for name in ("class_embedding", "positional_embedding", "latent_token_positional_embedding"):
    out[f"{dst}/{name}"] = w.take(f"{prefix}{name}")
  return out


def _conv1x1(weight: np.ndarray) -> np.ndarray:
  """A 1x1 Conv2d weight [out, in, 1, 1] -> Dense kernel [in, out]."""
  return weight[:, :, 0, 0].T


def _encoder(w: Weights, size: str) -> dict:
  out = _vit(w, "encoder.", "encoder", size)
  patch = w.take("encoder.patch_embed.weight")  # [E, 3, p, p] -> [(p, p, 3), E] (patchify)
  out["encoder/patch_embed/kernel"] = patch.transpose(2, 3, 1, 0).reshape(-1, patch.shape[0])
  out["encoder/patch_embed/bias"] = w.take("encoder.patch_embed.bias")
  out["encoder/latent_tokens"] = w.take("latent_tokens")
  out["encoder/conv_out/kernel"] = w.take("encoder.conv_out.weight", _conv1x1)
  out["encoder/conv_out/bias"] = w.take("encoder.conv_out.bias")
  return out


def _decoder(w: Weights, size: str, two_stage: bool) -> dict:
  out = _vit(w, "decoder.", "decoder", size)
  out["decoder/mask_token"] = w.take("decoder.mask_token").reshape(-1)
  out["decoder/decoder_embed/kernel"] = w.take("decoder.decoder_embed.weight", linear)
  out["decoder/decoder_embed/bias"] = w.take("decoder.decoder_embed.bias")
  heads = (("ffn.0", "ffn_hidden"), ("ffn.2", "ffn_out")) if two_stage else (("ffn.0", "ffn"),)
  for src, name in heads:
    out[f"decoder/{name}/kernel"] = w.take(f"decoder.{src}.weight", _conv1x1)
    out[f"decoder/{name}/bias"] = w.take(f"decoder.{src}.bias")
  if not two_stage:  # a 3x3 conv on the RGB image
    out["decoder/conv_out/kernel"] = w.take("decoder.conv_out.weight", conv)
    out["decoder/conv_out/bias"] = w.take("decoder.conv_out.bias")
  return out


def _mode(w: Weights) -> str:
  if "pixel_decoder.conv_in.weight" in w:
    return "two_stage"
  return "vq" if "quantize.embedding.weight" in w else "vae"


def build(w: Weights, *, expect: str) -> tuple[dict, dict]:
  """A 1d-tokenizer TiTok state dict -> (jaxtok config, variables); `expect` is the design
  the source names (one of MODES), checked against the tensors the file holds."""
  mode = _mode(w)
  if mode != expect:
    raise ValueError(f"{w.where} holds a {mode} TiTok (by its tensors), not the {expect} one "
                     f"this source converts; pick the matching source (`jaxtok convert --list`)")
  enc, dec = _size_name(w, "encoder."), _size_name(w, "decoder.")
  params = {**_encoder(w, enc), **_decoder(w, dec, mode == "two_stage")}
  patch = w.arrays["encoder.patch_embed.weight"].shape[-1]
  grid = int(round(np.sqrt(w.arrays["encoder.positional_embedding"].shape[0] - 1)))
  model = {"name": "titok.TiTok", "image_size": grid * patch, "patch_size": patch,
           "num_latent_tokens": int(w.arrays["latent_tokens"].shape[0]),
           "encoder_size": enc, "decoder_size": dec, "pixel_range": "unit"}
  if mode == "vae":
    quantizer = {"name": "kl.KLQuantizer",
                 "dim": int(w.arrays["encoder.conv_out.weight"].shape[0] // 2)}
  else:
    codebook = params["quantizer/codebook"] = w.take("quantize.embedding.weight")
    quantizer = {"name": "vq.VectorQuantizer", "codebook_size": int(codebook.shape[0]),
                 "dim": int(codebook.shape[1]),
                 "metric": "cosine" if mode == "two_stage" else "l2"}
  if mode == "two_stage":
    pixel = maskgit.torch_config(w, "pixel_decoder.")
    params.update(maskgit.torch_decoder(w, "pixel_decoder.", pixel, "pixel_decoder"))
    params["pixel_codebook"] = w.take("pixel_quantize.embedding.weight")
    model.update(name="titok_two_stage.TiTokTwoStage", legacy_token_layout=True,
                 pixel_codebook_size=int(params["pixel_codebook"].shape[0]),
                 pixel_code_dim=int(params["pixel_codebook"].shape[1]),
                 pixel_config={k: getattr(pixel, k) for k in ("ch", "ch_mult", "num_res_blocks",
                                                              "decoder_res_blocks")
                               if getattr(pixel, k) != getattr(MASKGIT_VQGAN, k)})
  config = {"trainer": "tokenizer", "model": model, "quantizer": quantizer,
            "data": {"image_size": model["image_size"]}, "train": {"compute_dtype": "float32"}}
  return config, {"params": nest(params)}


def _source(name: str, file: str, mode: str, what: str) -> Source:
  return Source(name, (file,), f"TiTok {what} (bytedance/1d-tokenizer)",
                functools.partial(build, expect=mode))


SOURCES = (
    _source("titok-s128", "tokenizer_titok_s128.bin", "two_stage",
            "S-128, two-stage: 4096 codes, MaskGIT-VQGAN decoder; 83.7 M"),
    _source("titok-b64", "tokenizer_titok_b64.bin", "two_stage",
            "B-64, two-stage: 4096 codes, MaskGIT-VQGAN decoder; 204.8 M"),
    _source("titok-l32", "tokenizer_titok_l32.bin", "two_stage",
            "L-32, two-stage: 4096 codes, MaskGIT-VQGAN decoder; 641.1 M"),
    _source("titok-bl64-vq8k", "model.safetensors", "vq", "BL-64 VQ, 8192 codes; 390.0 M"),
    _source("titok-bl128-vq8k", "model.safetensors", "vq", "BL-128 VQ, 8192 codes; 390.2 M"),
    _source("titok-sl256-vq8k", "model.safetensors", "vq", "SL-256 VQ, 8192 codes; 330.3 M"),
    _source("titok-ll32-vae-c16", "model.safetensors", "vae", "LL-32 VAE, 16 channels; 606.9 M"),
    _source("titok-bl64-vae-c16", "model.safetensors", "vae", "BL-64 VAE, 16 channels; 389.4 M"),
    _source("titok-bl128-vae-c16", "model.safetensors", "vae",
            "BL-128 VAE, 16 channels; 389.6 M"),
)
