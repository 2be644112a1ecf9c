"""taming-transformers VQGANs (Esser et al. 2021, CompVis/taming-transformers) -> jaxtok
`VQGAN` preset "taming-f16" with an unnormalized VQ of 256 dims.

The released ImageNet models (`vqgan_imagenet_f16_1024`, `vqgan_imagenet_f16_16384`) are
Lightning `last.ckpt` files: {"state_dict": ...} of taming/models/vqgan.py's VQModel, its
training loss included (`loss.discriminator.*`, the LPIPS `loss.perceptual_loss.*`), which
the converter drops. The network is the one LlamaGen later copied: attention in the middle
and at the lowest resolution (attn_resolutions [16] at 256 pixels), 3x3 stride-2 downsampling
after padding bottom/right, nearest upsampling, so jaxtok's VQGAN takes it by renaming:

  encoder.down.{i}.block.{j} -> encoder/conv_blocks_{i}/res_{j}, .attn.{j} -> attn_{j},
  .downsample.conv -> downsample/conv; mid.block_1, mid.attn_1, mid.block_2 -> mid_0, 1, 2;
  decoder.up.{i} (level i, highest resolution first) -> decoder/conv_blocks_{L-1-i};
  quantize.embedding.weight -> quantizer/codebook; convs OIHW -> HWIO; norm weight -> scale.

Widths, levels, blocks and the codebook are read from the shapes; attention anywhere but
the lowest level and the middle is refused, naming the tensor (jaxtok's VQGAN has no place
for it). Pixels are in [-1, 1] as jaxtok's.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxtok import build
from jaxtok.convert.common import Source, Weights, conv, nest
from jaxtok.models.tokenizers.vqgan import VQGAN

PRESET = "taming-f16"
_MID = {"mid_0": "mid.block_1", "mid_1": "mid.attn_1", "mid_2": "mid.block_2"}


def vqgan_fields(w: Weights) -> dict:
  """VQGANConfig entries read off a taming VQModel state dict's shapes."""
  ch = w.shape("encoder.conv_in.weight")[0]
  levels = w.num_indexed("encoder.down.")
  attention = [k for k in w.keys("*.attn.*.q.weight")
               if not re.match(rf"(encoder\.down|decoder\.up)\.{levels - 1}\.", k)]
  if attention:
    raise ValueError(f"{w.where}: attention at a level other than the lowest resolution "
                     f"({attention[0]}), which jaxtok's VQGAN does not place")
  return {"ch": ch,
          "ch_mult": tuple(w.shape(f"encoder.down.{i}.block.0.conv2.weight")[0] // ch
                           for i in range(levels)),
          "num_res_blocks": w.num_indexed("encoder.down.0.block."),
          "decoder_res_blocks": w.num_indexed("decoder.up.0.block."),
          "attention": "encoder.mid.attn_1.q.weight" in w,
          "z_channels": w.shape("quant_conv.weight")[1]}


def torch_name(path: tuple[str, ...], levels: int) -> str:
  """jaxtok VQGAN param path -> taming state-dict name."""
  if path == ("quantizer", "codebook"):
    return "quantize.embedding.weight"
  *parents, leaf = path
  names = []
  for part in parents:
    if part in _MID:
      names.append(_MID[part])
    elif m := re.fullmatch(r"conv_blocks_(\d+)", part):
      level = int(m.group(1))
      names.append(f"down.{level}" if parents[0] == "encoder" else f"up.{levels - 1 - level}")
    elif m := re.fullmatch(r"(res|attn)_(\d+)", part):
      names.append(f"{'block' if m.group(1) == 'res' else 'attn'}.{m.group(2)}")
    else:
      names.append(part)
  return ".".join([*names, "bias" if leaf == "bias" else "weight"])


def _param_shapes(model: nn.Module, side: int) -> dict[tuple[str, ...], tuple[int, ...]]:
  key = jax.random.key(0)
  tree = jax.eval_shape(lambda: nn.meta.unbox(model.init(
      {"params": key, "quantizer": key}, jnp.zeros((1, side, side, 3))))["params"])
  return {tuple(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def build_vqgan(w: Weights, *, image_size: int = 256) -> tuple[dict, dict]:
  """A taming VQModel state dict -> (tokenizer run config, variables)."""
  codebook_size, dim = w.shape("quantize.embedding.weight")
  found = vqgan_fields(w)
  preset = VQGAN.PRESETS[PRESET]["config"]
  model = {"name": "vqgan.VQGAN", "preset": PRESET}
  overrides = {k: v for k, v in found.items() if getattr(preset, k) != v}
  if overrides:
    model["config"] = overrides
  config = {"trainer": "tokenizer", "seed": 0, "model": model,
            "quantizer": {"name": "vq.VectorQuantizer", "codebook_size": int(codebook_size),
                          "dim": int(dim), "metric": "l2", "beta": 0.25},
            "data": {"image_size": int(image_size)}, "train": {"compute_dtype": "float32"}}
  tokenizer = build.tokenizer(config["model"], config["quantizer"])
  factor = tokenizer.downsample_factor
  if not isinstance(image_size, int) or image_size < factor or image_size % factor:
    raise ValueError(f"image_size must be a positive multiple of the downsampling factor "
                     f"{factor}; got {image_size!r}")
  w.ignore("loss.*")  # the training loss: discriminator and LPIPS
  return config, {"params": vqgan_params(w, tokenizer)}


def vqgan_params(w: Weights, tokenizer: VQGAN) -> dict:
  """Every param of `tokenizer` taken from a taming-layout state dict (taming's VQModel,
  LDM's AutoencoderKL), by `torch_name`; convs OIHW -> HWIO."""
  levels = len(tokenizer.config.ch_mult)
  flat = {}
  for path, shape in _param_shapes(tokenizer, 2 * tokenizer.downsample_factor).items():
    name = torch_name(path, levels)
    if len(shape) == 4:  # conv kernel HWIO <- OIHW
      flat["/".join(path)] = w.take(name, conv, shape=(shape[3], shape[2], *shape[:2]))
    else:
      flat["/".join(path)] = w.take(name, shape=shape)
  return nest(flat)


SOURCES = tuple(
    Source(f"taming-vqgan-f16-{codes}", ("last.ckpt",),
           f"taming-transformers VQGAN ImageNet f16, {codes} x 256 codes "
           f"(vqgan_imagenet_f16_{codes}); {params} M", build_vqgan, options=("image_size",))
    for codes, params in ((1024, "72.1"), (16384, "76.1")))
