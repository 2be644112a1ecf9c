"""The MaskGIT VQGAN (Chang et al. 2022, google-research/maskgit) -> jaxtok `VQGAN` preset
"maskgit-f16" with a 1024 x 256 codebook, from either release:

- "maskgit-vqgan": the authors' Flax checkpoint `tokenizer_imagenet256_checkpoint` (msgpack,
  Flax auto names, kernels already HWIO: renaming only);
- "maskgit-vqgan-torch": the PyTorch port 1d-tokenizer ships, `maskgit-vqgan-imagenet-f16-256.bin`
  (names as its modeling/modules/maskgit_vqgan.py; also the pixel decoder of two-stage TiTok,
  see `torch_decoder`).

Both networks take [0, 1] pixels; the export keeps jaxtok's [-1, 1] API by mapping at the
edges (`VQGANConfig.pixel_range="unit"`). Widths, levels and blocks per level are read from
the weights' shapes, so smaller models of the same design convert too.
"""

import dataclasses
import re

from jaxtok.convert.common import Source, Weights, conv, nest
from jaxtok.models.tokenizers.vqgan import VQGAN, VQGANConfig

MASKGIT = VQGAN.PRESETS["maskgit-f16"]["config"]
CODEBOOK = (1024, 256)  # the released codebook: codes x dims


def _res_block(w: Weights, src: dict[str, str], dst: str, layout) -> dict:
  """One ResnetBlock: src maps jaxtok names (norm1, conv1, ...) to the checkpoint's prefixes."""
  out = {}
  for name, key in src.items():
    if name.startswith("norm"):
      out[f"{dst}/{name}/scale"] = w.take(f"{key}{'.weight' if layout else '/scale'}")
      out[f"{dst}/{name}/bias"] = w.take(f"{key}{'.bias' if layout else '/bias'}")
    elif name != "nin_shortcut" or layout is None or f"{key}.weight" in w:
      # (the PyTorch shortcut exists only where widths change; Flax callers list it if present)
      out[f"{dst}/{name}/kernel"] = w.take(f"{key}{'.weight' if layout else '/kernel'}", layout)
  return out


def _count(w: Weights, pattern: str) -> int:
  """How many distinct values the (\\d+) group of `pattern` takes among the weights' names."""
  return len({m.group(1) for k in w.keys() if (m := re.fullmatch(pattern, k))})


def _conv_param(w: Weights, key: str, dst: str, layout, bias: bool = True) -> dict:
  if layout is None:  # Flax: already HWIO
    out = {f"{dst}/kernel": w.take(f"{key}/kernel")}
    if bias:
      out[f"{dst}/bias"] = w.take(f"{key}/bias")
    return out
  out = {f"{dst}/kernel": w.take(f"{key}.weight", layout)}
  if bias:
    out[f"{dst}/bias"] = w.take(f"{key}.bias")
  return out


def torch_config(w: Weights, prefix: str) -> VQGANConfig:
  """The VQGANConfig of a PyTorch-port decoder under `prefix` (e.g. "decoder."), from shapes."""
  levels = _count(w, rf"{re.escape(prefix)}up\.(\d+)\..*")
  blocks = _count(w, rf"{re.escape(prefix)}up\.0\.block\.(\d+)\..*")
  ch = w.arrays[f"{prefix}conv_out.weight"].shape[1]
  mult = tuple(w.arrays[f"{prefix}up.{i}.block.0.conv2.weight"].shape[0] // ch
               for i in range(levels))
  return dataclasses.replace(MASKGIT, ch=ch, ch_mult=mult, num_res_blocks=blocks,
                             decoder_res_blocks=blocks, pixel_range="unit")


def torch_decoder(w: Weights, prefix: str, cfg: VQGANConfig, dst: str) -> dict:
  """Flat jaxtok params of `vqgan.Decoder` (under `dst`) from the PyTorch port's decoder."""
  levels = len(cfg.ch_mult)
  res = lambda key: {n: f"{key}.{n}" for n in ("norm1", "conv1", "norm2", "conv2",
                                                "nin_shortcut")}
  out = _conv_param(w, f"{prefix}conv_in", f"{dst}/conv_in", conv)
  for j in range(2):
    out.update(_res_block(w, res(f"{prefix}mid.{j}"), f"{dst}/mid_{j}", conv))
  for i in range(levels):  # PyTorch's up.i is level i; jaxtok numbers from the lowest
    n = levels - 1 - i
    for j in range(cfg.decoder_res_blocks):
      out.update(_res_block(w, res(f"{prefix}up.{i}.block.{j}"),
                            f"{dst}/conv_blocks_{n}/res_{j}", conv))
    if i > 0:
      out.update(_conv_param(w, f"{prefix}up.{i}.upsample_conv",
                             f"{dst}/conv_blocks_{n}/upsample/conv", conv))
  out.update({f"{dst}/norm_out/scale": w.take(f"{prefix}norm_out.weight"),
              f"{dst}/norm_out/bias": w.take(f"{prefix}norm_out.bias")})
  out.update(_conv_param(w, f"{prefix}conv_out", f"{dst}/conv_out", conv))
  return out


def _torch_encoder(w: Weights, cfg: VQGANConfig) -> dict:
  res = lambda key: {n: f"{key}.{n}" for n in ("norm1", "conv1", "norm2", "conv2",
                                                "nin_shortcut")}
  out = _conv_param(w, "encoder.conv_in", "encoder/conv_in", conv, bias=False)
  for i in range(len(cfg.ch_mult)):
    for j in range(cfg.num_res_blocks):
      out.update(_res_block(w, res(f"encoder.down.{i}.block.{j}"),
                            f"encoder/conv_blocks_{i}/res_{j}", conv))
  for j in range(2):
    out.update(_res_block(w, res(f"encoder.mid.{j}"), f"encoder/mid_{j}", conv))
  out.update({"encoder/norm_out/scale": w.take("encoder.norm_out.weight"),
              "encoder/norm_out/bias": w.take("encoder.norm_out.bias")})
  out.update(_conv_param(w, "encoder.conv_out", "encoder/conv_out", conv))
  return out


def _export(cfg: VQGANConfig, codebook: tuple[int, int], image_size: int) -> dict:
  """The jaxtok run config of a converted MaskGIT VQGAN."""
  return {"trainer": "tokenizer",
          "model": {"name": "vqgan.VQGAN", "preset": "maskgit-f16",
                    "config": {k: v for k, v in cfg.__dict__.items() if getattr(MASKGIT, k) != v}},
          "quantizer": {"name": "vq.VectorQuantizer", "codebook_size": int(codebook[0]),
                        "dim": int(codebook[1]), "metric": "l2"},
          "data": {"image_size": image_size}, "train": {"compute_dtype": "float32"}}


def vqgan_config(image_size: int = 256) -> dict:
  """The config either release converts to (what RAR's and MaskGIT's tokens come from)."""
  cfg = dataclasses.replace(MASKGIT, pixel_range="unit")
  return _export(cfg, CODEBOOK, image_size)


def build_torch(w: Weights, image_size: int = 256) -> tuple[dict, dict]:
  """The PyTorch port (`maskgit-vqgan-imagenet-f16-256.bin`) -> (config, variables)."""
  cfg = torch_config(w, "decoder.")
  params = {**_torch_encoder(w, cfg), **torch_decoder(w, "decoder.", cfg, "decoder")}
  params["quantizer/codebook"] = w.take("quantize.embedding.weight")
  return _export(cfg, params["quantizer/codebook"].shape, image_size), {"params": nest(params)}


def flax_config(w: Weights) -> VQGANConfig:
  """The VQGANConfig of the Flax checkpoint, from its names and shapes."""
  upsamples = _count(w, r"decoder/Conv_(\d+)/kernel") - 2  # minus conv_in and conv_out
  levels = upsamples + 1
  blocks = (_count(w, r"encoder/ResBlock_(\d+)/.*") // (levels + 1))
  ch = w.arrays["encoder/Conv_0/kernel"].shape[-1]
  mult = tuple(w.arrays[f"encoder/ResBlock_{i * blocks}/Conv_1/kernel"].shape[-1] // ch
               for i in range(levels))
  return dataclasses.replace(MASKGIT, ch=ch, ch_mult=mult, num_res_blocks=blocks,
                             decoder_res_blocks=blocks, pixel_range="unit")


def build_flax(w: Weights, image_size: int = 256) -> tuple[dict, dict]:
  """The Flax checkpoint (`tokenizer_imagenet256_checkpoint`) -> (config, variables).

  Flax numbers modules per parent in call order: the encoder's ResBlock_n run over the levels
  then the middle, the decoder's over the middle then the levels from the lowest resolution,
  and its Conv_1 .. Conv_{L-1} are the upsampling convs (lowest resolution first)."""
  cfg = flax_config(w)
  levels, blocks = len(cfg.ch_mult), cfg.num_res_blocks
  res = lambda key: {"norm1": f"{key}/GroupNorm_0", "conv1": f"{key}/Conv_0",
                     "norm2": f"{key}/GroupNorm_1", "conv2": f"{key}/Conv_1",
                     **({"nin_shortcut": f"{key}/Conv_2"} if f"{key}/Conv_2/kernel" in w else {})}
  p = {"encoder/conv_in/kernel": w.take("encoder/Conv_0/kernel")}
  for n in range(levels * blocks):
    p.update(_res_block(w, res(f"encoder/ResBlock_{n}"),
                        f"encoder/conv_blocks_{n // blocks}/res_{n % blocks}", None))
  for j in range(blocks):
    p.update(_res_block(w, res(f"encoder/ResBlock_{levels * blocks + j}"),
                        f"encoder/mid_{j}", None))
    p.update(_res_block(w, res(f"decoder/ResBlock_{j}"), f"decoder/mid_{j}", None))
  for n in range(levels * blocks):
    p.update(_res_block(w, res(f"decoder/ResBlock_{blocks + n}"),
                        f"decoder/conv_blocks_{n // blocks}/res_{n % blocks}", None))
  for n in range(levels - 1):
    p.update(_conv_param(w, f"decoder/Conv_{n + 1}", f"decoder/conv_blocks_{n}/upsample/conv",
                         None))
  for part, conv_out in (("encoder", "Conv_1"), ("decoder", f"Conv_{levels}")):
    p.update({f"{part}/norm_out/scale": w.take(f"{part}/GroupNorm_0/scale"),
              f"{part}/norm_out/bias": w.take(f"{part}/GroupNorm_0/bias")})
    p.update(_conv_param(w, f"{part}/{conv_out}", f"{part}/conv_out", None))
  p.update(_conv_param(w, "decoder/Conv_0", "decoder/conv_in", None))
  p["quantizer/codebook"] = w.take("quantizer/codebook")
  return _export(cfg, p["quantizer/codebook"].shape, image_size), {"params": nest(p)}


SOURCES = (
    Source("maskgit-vqgan", ("tokenizer_imagenet256_checkpoint",),
           "MaskGIT VQGAN (google-research/maskgit, Flax), f16, 1024 x 256 codes, 54.5 M",
           build_flax, options=("image_size",)),
    Source("maskgit-vqgan-torch", ("maskgit-vqgan-imagenet-f16-256.bin",),
           "MaskGIT VQGAN, 1d-tokenizer's PyTorch port (fun-research/TiTok), f16, 54.5 M",
           build_torch, options=("image_size",)),
)
