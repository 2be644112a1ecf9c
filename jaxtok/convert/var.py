"""FoundationVision/VAR: the multi-scale VQVAE (`vae_ch160v4096z32.pth`) and the VAR
transformers (`var_d16.pth` ... `var_d30.pth`), Tian et al. 2024.

VQVAE (VAR's models/vqvae.py, basic_vae.py): the taming CNN, so LlamaGen's renaming with
`down.{i}.block.{j}` -> `encoder/conv_blocks_{i}/res_{j}`, `down.{i}.attn.{j}` -> `attn_{j}`,
`mid.block_1 / attn_1 / block_2` -> `mid_0 / mid_1 / mid_2`, the decoder's `up.{i}` (i = 0
the highest resolution) -> `conv_blocks_{levels − 1 − i}`; the attention's fused 1×1 `qkv`
conv splits into q, k, v; `quantize.embedding` -> the quantizer's codebook and
`quantize.quant_resi.qresi_ls.{i}` -> `phi_{i}`; the usage buffer `ema_vocab_hit_SV` is
dropped. VAR (models/var.py, basic_var.py): linears transposed, the per-block
`attn.scale_mul_1H11` [1, N, 1, 1] -> `scale_mul` [N], blocks stacked on a leading layer
axis; the buffers `attn_bias_for_masking`, `lvl_1L` and `zero_k_bias` are dropped.
"""

import dataclasses

import numpy as np

from jaxtok.convert.common import Source, Weights, conv, nest, read_tokenizer_config, stack
from jaxtok.models.generators.var import VAR
from jaxtok.models.tokenizers.var_vqvae import VQVAE
from jaxtok.quantizers.multiscale import VAR_PATCH_NUMS

VAE_BUFFERS = ("quantize.ema_vocab_hit_SV",)
VAR_BUFFERS = ("attn_bias_for_masking", "lvl_1L", "blocks.*.attn.zero_k_bias")


def _torch_conv(w: Weights, name: str, out: dict, key: str) -> None:
  out[f"{key}/kernel"] = w.take(f"{name}.weight", conv)
  out[f"{key}/bias"] = w.take(f"{name}.bias")


def _resnet(w, name, out, key):
  w.norm(f"{name}.norm1", out, f"{key}/norm1")
  _torch_conv(w, f"{name}.conv1", out, f"{key}/conv1")
  w.norm(f"{name}.norm2", out, f"{key}/norm2")
  _torch_conv(w, f"{name}.conv2", out, f"{key}/conv2")
  if f"{name}.nin_shortcut.weight" in w:
    _torch_conv(w, f"{name}.nin_shortcut", out, f"{key}/nin_shortcut")


def _attn(w, name, out, key):
  w.norm(f"{name}.norm", out, f"{key}/norm")
  qkv, bias = w.take(f"{name}.qkv.weight", conv), w.take(f"{name}.qkv.bias")
  if qkv is not None and bias is not None:
    for part, k, b in zip("qkv", np.split(qkv, 3, axis=-1), np.split(bias, 3)):
      out[f"{key}/{part}/kernel"], out[f"{key}/{part}/bias"] = k, b
  _torch_conv(w, f"{name}.proj_out", out, f"{key}/proj_out")


def _blocks(w, side, name, key, out):
  """The ResnetBlocks (and AttnBlocks) of one encoder `down` / decoder `up` level."""
  j = 0
  while f"{side}.{name}.block.{j}.conv1.weight" in w:
    _resnet(w, f"{side}.{name}.block.{j}", out, f"{side}/{key}/res_{j}")
    if f"{side}.{name}.attn.{j}.qkv.weight" in w:
      _attn(w, f"{side}.{name}.attn.{j}", out, f"{side}/{key}/attn_{j}")
    j += 1


def vqvae_params(w: Weights, levels: int) -> dict:
  """The VQVAE's params tree from VAR's state dict names (`levels` = len(ch_mult))."""
  out: dict = {}
  for side in ("encoder", "decoder"):
    _torch_conv(w, f"{side}.conv_in", out, f"{side}/conv_in")
    w.norm(f"{side}.norm_out", out, f"{side}/norm_out")
    _torch_conv(w, f"{side}.conv_out", out, f"{side}/conv_out")
    _resnet(w, f"{side}.mid.block_1", out, f"{side}/mid_0")
    _attn(w, f"{side}.mid.attn_1", out, f"{side}/mid_1")
    _resnet(w, f"{side}.mid.block_2", out, f"{side}/mid_2")
  for i in range(levels):
    _blocks(w, "encoder", f"down.{i}", f"conv_blocks_{i}", out)
    _blocks(w, "decoder", f"up.{i}", f"conv_blocks_{levels - 1 - i}", out)
    if i < levels - 1:
      _torch_conv(w, f"encoder.down.{i}.downsample.conv", out,
                  f"encoder/conv_blocks_{i}/downsample/conv")
    if i > 0:
      _torch_conv(w, f"decoder.up.{i}.upsample.conv", out,
                  f"decoder/conv_blocks_{levels - 1 - i}/upsample/conv")
  _torch_conv(w, "quant_conv", out, "quant_conv")
  _torch_conv(w, "post_quant_conv", out, "post_quant_conv")
  out["quantizer/codebook"] = w.take("quantize.embedding.weight")
  for i in range(len(w.keys("quantize.quant_resi.qresi_ls.*.weight"))):
    _torch_conv(w, f"quantize.quant_resi.qresi_ls.{i}", out, f"quantizer/phi_{i}/conv")
  w.ignore(*VAE_BUFFERS)
  return nest(out)


def var_params(w: Weights, depth: int) -> dict:
  """The VAR transformer's params tree from VAR's state dict names."""
  out: dict = {}
  w.dense("word_embed", out, "word_embed")
  out["class_emb/embedding"] = w.take("class_emb.weight")
  out["pos_start"] = w.take("pos_start")[0]
  out["pos_1LC"] = w.take("pos_1LC")[0]
  out["lvl_embed/embedding"] = w.take("lvl_embed.weight")
  w.dense("head_nm.ada_lin.1", out, "head/ada_lin")
  w.dense("head", out, "head/head")
  per_layer = []
  for i in range(depth):
    block: dict = {}
    name = f"blocks.{i}"
    w.dense(f"{name}.ada_lin.1", block, "ada_lin")
    w.dense(f"{name}.attn.mat_qkv", block, "mat_qkv", bias=False)
    block["q_bias"] = w.take(f"{name}.attn.q_bias")
    block["v_bias"] = w.take(f"{name}.attn.v_bias")
    if f"{name}.attn.scale_mul_1H11" in w:
      block["scale_mul"] = w.take(f"{name}.attn.scale_mul_1H11").reshape(-1)
    w.dense(f"{name}.attn.proj", block, "proj")
    w.dense(f"{name}.ffn.fc1", block, "fc1")
    w.dense(f"{name}.ffn.fc2", block, "fc2")
    per_layer.append(block)
  for key in per_layer[0] if per_layer else ():
    if all(b[key] is not None for b in per_layer):
      out[f"blocks/{key}"] = stack([b[key] for b in per_layer])
  w.ignore(*VAR_BUFFERS)
  return nest(out)


# -- configs ---------------------------------------------------------------------------------

def vqvae_fields(w: Weights) -> dict:
  """The VQVAE's VQGANConfig entries and quantizer sizes, read off the tensors' shapes."""
  ch = w.shape("encoder.conv_in.weight")[0]
  levels = w.num_indexed("encoder.down.")
  mults = [w.shape(f"encoder.down.{i}.block.0.conv1.weight")[0] // ch for i in range(levels)]
  config = {"ch": ch, "ch_mult": mults, "num_res_blocks": w.num_indexed("encoder.down.0.block."),
            "decoder_res_blocks": w.num_indexed("decoder.up.0.block."),
            "z_channels": w.shape("encoder.conv_out.weight")[0],
            "quant_conv_kernel": w.shape("quant_conv.weight")[-1]}
  codebook_size, dim = w.shape("quantize.embedding.weight")
  return {"config": config, "codebook_size": codebook_size, "dim": dim,
          "num_phi": w.num_indexed("quantize.quant_resi.qresi_ls.")}


def vqvae_config(fields: dict, patch_nums) -> dict:
  """The jaxtok run config of a VAR VQVAE (the "var-vqvae-f16" preset plus what differs)."""
  preset = VQVAE.PRESETS["var-vqvae-f16"]["config"]
  overrides = {k: v for k, v in fields["config"].items()
               if getattr(preset, k) != (tuple(v) if isinstance(v, list) else v)}
  model = {"name": "var_vqvae.VQVAE", "preset": "var-vqvae-f16"}
  if overrides:
    model["config"] = overrides
  factor = 2 ** (len(fields["config"]["ch_mult"]) - 1)
  return {"trainer": "tokenizer", "seed": 0, "model": model,
          "quantizer": {"name": "multiscale.MultiScaleVQ",
                        "codebook_size": int(fields["codebook_size"]), "dim": int(fields["dim"]),
                        "patch_nums": [int(p) for p in patch_nums],
                        "num_phi": int(fields["num_phi"])},
          "data": {"image_size": int(patch_nums[-1]) * factor},
          "train": {"compute_dtype": "float32"}}


def _patch_nums(patch_nums) -> tuple[int, ...]:
  if isinstance(patch_nums, str):
    patch_nums = [int(p) for p in patch_nums.replace(",", " ").split()]
  return tuple(int(p) for p in patch_nums)


def build_vqvae(w: Weights, *, patch_nums=VAR_PATCH_NUMS) -> tuple[dict, dict]:
  """VAR's VQVAE state dict -> (tokenizer run config, variables)."""
  patch_nums = _patch_nums(patch_nums)
  fields = vqvae_fields(w)
  scales = w.shape("quantize.ema_vocab_hit_SV")[0] if "quantize.ema_vocab_hit_SV" in w else None
  if scales is not None and scales != len(patch_nums):
    raise ValueError(f"patch_nums: the checkpoint was trained with {scales} scales; got "
                     f"{len(patch_nums)} ({patch_nums})")
  config = vqvae_config(fields, patch_nums)
  return config, {"params": vqvae_params(w, len(fields["config"]["ch_mult"]))}


def var_fields(w: Weights, num_heads: int | None = None) -> dict:
  """The VAR model's sizes, read off the state dict (heads from the attention scales, else
  `num_heads`, else VAR's rule heads = depth)."""
  depth = w.num_indexed("blocks.")
  rows, width = w.shape("class_emb.weight")
  l2 = "blocks.0.attn.scale_mul_1H11" in w
  if num_heads is None:
    num_heads = w.shape("blocks.0.attn.scale_mul_1H11")[1] if l2 else depth
  return {"depth": depth, "width": width, "num_heads": int(num_heads), "num_classes": rows - 1,
          "codebook_size": w.shape("head.weight")[0],
          "latent_dim": w.shape("word_embed.weight")[1], "attn_l2_norm": l2,
          "mlp_ratio": w.shape("blocks.0.ffn.fc1.weight")[0] / width}


def _vqvae_config(path: str) -> dict:
  """The config of a VAR VQVAE export directory (option `tokenizer`)."""
  config = read_tokenizer_config(path)
  if config.get("quantizer", {}).get("name") != "multiscale.MultiScaleVQ":
    raise ValueError(f"tokenizer must be a VAR VQVAE export (multiscale.MultiScaleVQ); "
                     f"{path!r} holds {config.get('quantizer', {}).get('name')!r}")
  return config


def build_var(w: Weights, *, tokenizer: str | None = None, patch_nums=VAR_PATCH_NUMS,
              num_heads: int | None = None) -> tuple[dict, dict]:
  """A VAR transformer state dict -> (generator run config, variables). Its export carries
  the config of the VQVAE it samples for: VAR's vae_ch160v4096z32, or the export given as
  `tokenizer` (whose scales it takes)."""
  fields = var_fields(w, num_heads)
  if tokenizer is None:
    tok_config = vqvae_config({"config": dict(VQVAE_DEFAULT), "num_phi": 4,
                               "codebook_size": fields["codebook_size"],
                               "dim": fields["latent_dim"]}, _patch_nums(patch_nums))
  else:
    tok_config = _vqvae_config(tokenizer)
  quant = tok_config["quantizer"]
  if (quant["codebook_size"], quant["dim"]) != (fields["codebook_size"], fields["latent_dim"]):
    raise ValueError(f"tokenizer: its {quant['codebook_size']} codes of dim {quant['dim']} "
                     f"differ from the VAR's {fields['codebook_size']} x "
                     f"{fields['latent_dim']}")
  scales = tuple(quant["patch_nums"])
  if w.shape("pos_1LC")[1] != sum(p * p for p in scales):
    raise ValueError(f"patch_nums {scales} make {sum(p * p for p in scales)} tokens; the "
                     f"checkpoint's positions are for {w.shape('pos_1LC')[1]}")
  preset = f"VAR-d{fields['depth']}"
  model = {"name": "var.VAR", **fields, "patch_nums": list(scales)}
  if preset in VAR.PRESETS:  # the preset plus the fields that differ from it
    base = {f.name: f.default for f in dataclasses.fields(VAR)} | VAR.PRESETS[preset]
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    model = {"name": "var.VAR", "preset": preset,
             **{k: v for k, v in model.items() if k != "name" and plain(base.get(k)) != v}}
  config = {"trainer": "var", "seed": 0, "model": model,
            "train": {"compute_dtype": "float32"}, "tokenizer": tok_config}
  return config, {"params": var_params(w, fields["depth"])}


# VAR's released VQVAE, vae_ch160v4096z32.pth.
VQVAE_DEFAULT = {"ch": 160, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2,
                 "decoder_res_blocks": 3, "z_channels": 32, "quant_conv_kernel": 3}


# -- the sources -----------------------------------------------------------------------------

def _var(depth: int, params: str) -> Source:
  return Source(f"var-d{depth}", (f"var_d{depth}.pth",),
                f"VAR-d{depth} (Tian et al. 2024), {params} params, ImageNet 256^2, 680 tokens "
                f"of 10 scales", build_var, options=("tokenizer", "patch_nums", "num_heads"))


SOURCES = (
    Source("var-vqvae", ("vae_ch160v4096z32.pth",),
           "VAR's multi-scale VQVAE (ImageNet 256^2), 4096 codes x 32, 10 scales, 109 M params",
           build_vqvae, options=("patch_nums",)),
    _var(16, "310 M"), _var(20, "601 M"), _var(24, "1.0 B"), _var(30, "2.0 B"),
)
