"""LlamaGen (Sun et al. 2024, "Autoregressive Model Beats Diffusion: Llama for Scalable Image
Generation") checkpoints -> jaxtok exports: the VQ tokenizers and the class-conditional GPTs.

The authors host the files on Hugging Face (FoundationVision/LlamaGen, peizesun/llamagen_t2i).
Sizes are read from the tensors' shapes (so a fine-tuned or smaller variant of the same
network converts too); the export's config names the jaxtok preset plus any field that
differs from it. Names map as NOTES.md "Published layouts" says:

- VQ (tokenizer/tokenizer_image/vq_model.py): `encoder.conv_blocks.2.res.1.conv1.weight` ->
  `encoder/conv_blocks_2/res_1/conv1/kernel` (OIHW -> HWIO), GroupNorm `weight` -> `scale`,
  `quantize.embedding.weight` -> `quantizer/codebook`; the usage buffer
  `quantize.codebook_used` is dropped.
- GPT (autoregressive/models/gpt.py): `layers.N.attention.wqkv` splits into query, key and
  value [E, heads, head_dim], linears transpose, the N layers stack on a leading axis (jaxtok
  scans its layers), `cls_embedding.embedding_table` (1000 classes + the null class of
  classifier-free guidance) -> `cond_embed/class_embed`.

A GPT export carries the config of the tokenizer its tokens come from (the `tokenizer` entry
`jaxtok sample` checks): by default the converted VQ-16 at the source's image size, or the
export given as the `tokenizer` option.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok import build
from jaxtok.convert.common import (Source, Weights, conv, linear, nest, read_tokenizer_config,
                                   stack)
from jaxtok.models.generators.ar import GPT, llamagen_mlp_dim
from jaxtok.models.tokenizers.vqgan import VQGAN

# Buffers, never parameters: the VQ's usage ring, and what a GPT saved after sampling holds.
VQ_BUFFERS = ("quantize.codebook_used",)
GPT_BUFFERS = ("freqs_cis", "causal_mask", "layers.*.attention.kv_cache.*")
# The VQ-16 tokenizer the c2i GPTs were trained on (vq_ds16_c2i.pt).
C2I_TOKENIZER = dict(preset="llamagen-vq16", codebook_size=16384, dim=8)
_INDEXED = re.compile(r"^(conv_blocks|res|attn|mid)_(\d+)$")  # jaxtok's suffix for a list index


# -- configs ---------------------------------------------------------------------------------

def tokenizer_config(preset: str, codebook_size: int, dim: int, image_size: int,
                     overrides: dict | None = None) -> dict:
  """The jaxtok run config of a LlamaGen VQ tokenizer: the VQGAN `preset` (with `overrides`
  of its VQGANConfig), LlamaGen's l2-normalised VQ (beta 0.25, no entropy term), and the
  image side it tokenizes (256: 16 x 16 VQ-16 tokens, 384: 24 x 24)."""
  model = {"name": "vqgan.VQGAN", "preset": preset}
  if overrides:
    model["config"] = dict(overrides)
  return {"trainer": "tokenizer", "seed": 0, "model": model,
          "quantizer": {"name": "vq.VectorQuantizer", "codebook_size": int(codebook_size),
                        "dim": int(dim), "metric": "cosine", "beta": 0.25,
                        "codebook_weight": 1.0, "entropy_weight": 0.0},
          "data": {"image_size": int(image_size)}, "train": {"compute_dtype": "float32"}}


def _differences(preset_fields: dict, found: dict) -> dict:
  return {k: v for k, v in found.items() if preset_fields.get(k) != v}


def _check_image_size(image_size, factor: int, option: str = "image_size") -> int:
  if not isinstance(image_size, (int, np.integer)) or isinstance(image_size, bool) or (
      image_size < factor or image_size % factor):
    raise ValueError(f"{option} must be a positive multiple of the tokenizer's downsampling "
                     f"factor {factor}; got {image_size!r}")
  return int(image_size)


def _param_shapes(model: nn.Module, inputs) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{path: shape} of the model's params, traced only (nothing allocated)."""
  key = jax.random.key(0)
  tree = jax.eval_shape(lambda: nn.meta.unbox(
      model.init({"params": key, "quantizer": key, "dropout": key}, inputs))["params"])
  return {tuple(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# -- VQ tokenizers ---------------------------------------------------------------------------

def vqgan_fields(weights: Weights) -> dict:
  """VQGANConfig entries read off a LlamaGen VQ state dict's shapes."""
  ch = weights.shape("encoder.conv_in.weight")[0]
  levels = weights.num_indexed("encoder.conv_blocks.")
  ch_mult = tuple(weights.shape(f"encoder.conv_blocks.{i}.res.0.conv1.weight")[0] // ch
                  for i in range(levels))
  return {"ch": ch, "ch_mult": ch_mult,
          "num_res_blocks": weights.num_indexed("encoder.conv_blocks.0.res."),
          "decoder_res_blocks": weights.num_indexed("decoder.conv_blocks.0.res."),
          "attention": "encoder.mid.1.q.weight" in weights,
          "z_channels": weights.shape("quant_conv.weight")[1]}


def vqgan_torch_name(path: tuple[str, ...]) -> str:
  """jaxtok VQGAN param path -> LlamaGen / taming state-dict name."""
  if path == ("quantizer", "codebook"):
    return "quantize.embedding.weight"
  *parents, leaf = path
  parents = [_INDEXED.sub(r"\1.\2", p) for p in parents]
  return ".".join([*parents, "bias" if leaf == "bias" else "weight"])


def vqgan_params(weights: Weights, model: VQGAN) -> dict:
  """Takes every param of `model` from a LlamaGen-layout state dict."""
  side = 2 * model.downsample_factor
  flat = {}
  for path, shape in _param_shapes(model, jnp.zeros((1, side, side, 3))).items():
    if len(shape) == 4:  # conv kernel HWIO <- OIHW
      torch_shape = (shape[3], shape[2], shape[0], shape[1])
      flat["/".join(path)] = weights.take(vqgan_torch_name(path), conv, shape=torch_shape)
    else:
      flat["/".join(path)] = weights.take(vqgan_torch_name(path), shape=shape)
  return nest(flat)


def build_vq(weights: Weights, *, preset: str, image_size: int = 256) -> tuple[dict, dict]:
  """A LlamaGen VQ state dict -> (tokenizer run config, variables)."""
  codebook_size, dim = weights.shape("quantize.embedding.weight")
  found = vqgan_fields(weights)
  preset_fields = {k: getattr(VQGAN.PRESETS[preset]["config"], k) for k in found}
  config = tokenizer_config(preset, codebook_size, dim, 0, _differences(preset_fields, found))
  model = build.tokenizer(config["model"], config["quantizer"])
  config["data"]["image_size"] = _check_image_size(image_size, model.downsample_factor)
  weights.ignore(*VQ_BUFFERS)
  return config, {"params": vqgan_params(weights, model)}


# -- GPTs ------------------------------------------------------------------------------------

def gpt_params(weights: Weights, model: GPT) -> dict:
  """Takes every param of `model` (scanned layers) from a LlamaGen GPT state dict."""
  e, n, m = model.width, model.num_heads, model.mlp_dim or llamagen_mlp_dim(model.width)
  h = e // n
  params = {"cond_embed": {"class_embed": {"embedding": weights.take(
                "cls_embedding.embedding_table.weight", shape=(model.num_classes + 1, e))}},
            "token_embed": {"embedding": weights.take(
                "tok_embeddings.weight", shape=(model.codebook_size, e))},
            "head": {"kernel": weights.take("output.weight", linear,
                                            shape=(model.codebook_size, e))}}
  layers = []
  for i in range(model.depth):
    p = f"layers.{i}."
    # A missing or misshapen tensor is None here; the failure that follows is reported by
    # Source.convert_state naming it.
    qkv = weights.take(p + "attention.wqkv.weight", shape=(3 * e, e))
    q, k, v = (qkv[j * e:(j + 1) * e].T.reshape(e, n, h) for j in range(3))
    out = weights.take(p + "attention.wo.weight", shape=(e, e)).T.reshape(n, h, e)
    layers.append({
        "attn": {"query": {"kernel": q}, "key": {"kernel": k}, "value": {"kernel": v},
                 "out": {"kernel": out}},
        "attn_norm": {"scale": weights.take(p + "attention_norm.weight", shape=(e,))},
        "mlp_norm": {"scale": weights.take(p + "ffn_norm.weight", shape=(e,))},
        "mlp": {"wi_gate": {"kernel": weights.take(p + "feed_forward.w1.weight", linear,
                                                   shape=(m, e))},
                "wi_up": {"kernel": weights.take(p + "feed_forward.w3.weight", linear,
                                                 shape=(m, e))},
                "wo": {"kernel": weights.take(p + "feed_forward.w2.weight", linear,
                                              shape=(e, m))}}})
  params["transformer"] = {
      "final_norm": {"scale": weights.take("norm.weight", shape=(e,))},
      "layers": jax.tree.map(lambda *xs: stack(list(xs)), *layers)}  # [depth, ...]
  return params


def gpt_fields(weights: Weights, preset: str, num_heads: int | None) -> dict:
  """GPT fields read off the shapes (num_heads, which no shape holds, from the preset when
  width and depth are the preset's, else from the `num_heads` option)."""
  codebook_size, width = weights.shape("tok_embeddings.weight")
  depth = weights.num_indexed("layers.")
  rows = weights.shape("cls_embedding.embedding_table.weight")[0]
  table = GPT.PRESETS[preset]
  if num_heads is None:
    if (width, depth) != (table["width"], table["depth"]):
      raise ValueError(f"num_heads: this checkpoint (width {width}, depth {depth}) is not "
                       f"{preset}'s size ({table['width']}, {table['depth']}), and no tensor "
                       f"shape holds the number of heads: pass the num_heads option")
    num_heads = table["num_heads"]
  if not isinstance(num_heads, int) or num_heads < 1 or width % num_heads:
    raise ValueError(f"num_heads must be a positive divisor of the width {width}; got "
                     f"{num_heads!r}")
  mlp_dim = weights.shape("layers.0.feed_forward.w1.weight")[0]
  found = {"width": width, "depth": depth, "num_heads": num_heads}
  fields = _differences(table, found)
  if mlp_dim != llamagen_mlp_dim(width):
    fields["mlp_dim"] = mlp_dim
  return {"preset": preset, "codebook_size": codebook_size, "num_classes": rows - 1, **fields}


def pairing(fields: dict, default_size: int, tokenizer: str | None,
            image_size: int | None) -> tuple[dict, tuple[int, int]]:
  """(tokenizer config, token grid) for the GPT: the given export's config, or LlamaGen's
  VQ-16 c2i tokenizer; at `image_size` (default: the source's). Refuses a tokenizer whose
  codebook or image size does not fit."""
  if tokenizer is None:
    config = tokenizer_config(image_size=image_size or default_size, **C2I_TOKENIZER)
  else:
    config = read_tokenizer_config(tokenizer)
    size = config["data"]["image_size"]
    if (image_size or default_size) != size:
      raise ValueError(f"tokenizer {tokenizer!r} tokenizes {size} x {size} images; this "
                       f"GPT is set for {image_size or default_size} (convert the tokenizer "
                       f"with image_size={image_size or default_size}, or pass "
                       f"image_size={size})")
  model = build.tokenizer(config["model"], config["quantizer"])
  size = config["data"]["image_size"]
  grid = tuple(model.token_shape((_check_image_size(size, model.downsample_factor),) * 2))
  if model.quantizer.codebook_size != fields["codebook_size"]:
    raise ValueError(f"tokenizer: its {model.quantizer.codebook_size} codes differ from the "
                     f"GPT's vocabulary of {fields['codebook_size']}")
  return config, grid


def build_gpt(weights: Weights, *, preset: str, image_size: int | None = None,
              default_size: int = 256, tokenizer: str | None = None,
              num_heads: int | None = None) -> tuple[dict, dict]:
  """A LlamaGen c2i GPT state dict -> (generator run config, variables)."""
  fields = gpt_fields(weights, preset, num_heads)
  if fields["num_classes"] < 1:
    raise ValueError(f"{weights.where}: the class table has no row for the null class of "
                     f"classifier-free guidance (LlamaGen's class_dropout_prob was 0)")
  tok_config, grid = pairing(fields, default_size, tokenizer, image_size)
  model_section = {"name": "ar.GPT", **fields, "token_shape": list(grid)}
  model = build.generator(model_section)
  weights.ignore(*GPT_BUFFERS)
  params = gpt_params(weights, model)
  config = {"trainer": "ar", "seed": 0, "model": model_section,
            "train": {"compute_dtype": "float32"}, "tokenizer": tok_config}
  return config, {"params": params}


# -- the sources -----------------------------------------------------------------------------

def _vq(name: str, file: str, preset: str, what: str) -> Source:
  return Source(name, (file,), what, functools.partial(build_vq, preset=preset),
                options=("image_size",))


def _gpt(size: str, preset: str, image_size: int, params: str) -> Source:
  grid = image_size // 16
  return Source(
      f"llamagen-gpt-{size.lower()}-{image_size}", (f"c2i_{size}_{image_size}.pt",),
      f"LlamaGen {preset} c2i, {params} params, ImageNet {image_size}^2 ({grid}x{grid} VQ-16 "
      f"tokens)", functools.partial(build_gpt, preset=preset, default_size=image_size),
      options=("image_size", "tokenizer", "num_heads"))


SOURCES = (
    _vq("llamagen-vq16", "vq_ds16_c2i.pt", "llamagen-vq16",
        "LlamaGen VQ-16 tokenizer (ImageNet), f16, 16384 codes, 72 M params"),
    _vq("llamagen-vq8", "vq_ds8_c2i.pt", "llamagen-vq8",
        "LlamaGen VQ-8 tokenizer (ImageNet), f8, 16384 codes, 70 M params"),
    _vq("llamagen-vq16-t2i", "vq_ds16_t2i.pt", "llamagen-vq16",
        "LlamaGen VQ-16 tokenizer of the text-to-image models (LAION-COCO + internal data)"),
    _gpt("B", "GPT-B", 256, "111 M"), _gpt("B", "GPT-B", 384, "111 M"),
    _gpt("L", "GPT-L", 256, "343 M"), _gpt("L", "GPT-L", 384, "343 M"),
    _gpt("XL", "GPT-XL", 384, "775 M"), _gpt("XXL", "GPT-XXL", 384, "1.4 B"),
    _gpt("3B", "GPT-3B", 384, "3.1 B"),
)
