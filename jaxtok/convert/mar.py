"""LTH14/mar MAR generators (`mar_base` / `mar_large` / `mar_huge` checkpoint-last.pth),
Li et al. 2024.

Layout (models/mar.py, models/diffloss.py): linears transposed; the timm blocks'
`attn.qkv` [3E, E] splits into query / key / value [E, N, H], `attn.proj` -> the [N, H, E]
output kernel, `norm1` / `norm2` -> attn_norm / mlp_norm, `mlp.fc1` / `fc2` -> mlp/wi / wo,
each stack stacked on a leading layer axis with `encoder_norm` / `decoder_norm` as its
final_norm; `*_pos_embed_learned` / `fake_latent` / `mask_token` lose their leading 1s;
the diffusion MLP `diffloss.net.*` -> head/* (time_embed.mlp.0 / 2 -> time_fc1 / 2,
res_blocks.i.{in_ln, mlp.0, mlp.2, adaLN_modulation.1} -> block_i_{norm, fc1, fc2,
modulation}, final_layer.{linear, adaLN_modulation.1} -> out / final_modulation). The
released files hold "model" and "model_ema"; MAR's evaluation samples with "model_ema",
which `--ema` converts ("model" by default).

MAR trains on its KL-16 VAE's latents times vae_scale_factor 0.2325 and decodes its samples
divided by it (engine_mar.py): the export's `latent_scale` (option, default 0.2325). Its
`tokenizer` entry (what `jaxtok sample` checks) is the config `--from mar-kl16` writes for
kl16.ckpt at 16 pixels per token, or that of the export given as the `tokenizer` option
(none by default for latents of other than 16 channels).
"""

import math

from jaxtok.convert import mar_vae
from jaxtok.convert.common import Source, Weights, nest, paired_tokenizer, stack
from jaxtok.models.generators.mar import MAR


def _vit_block(w: Weights, name: str, num_heads: int) -> dict:
  """A timm ViT block -> jaxtok's TransformerBlock tree."""
  block: dict = {}
  w.norm(f"{name}.norm1", block, "attn_norm")
  w.norm(f"{name}.norm2", block, "mlp_norm")
  qkv, bias = w.take(f"{name}.attn.qkv.weight"), w.take(f"{name}.attn.qkv.bias")
  if qkv is not None and bias is not None:
    width = qkv.shape[1]
    kernels = qkv.reshape(3, num_heads, width // num_heads, width).transpose(0, 3, 1, 2)
    biases = bias.reshape(3, num_heads, width // num_heads)
    for i, part in enumerate(("query", "key", "value")):
      block[f"attn/{part}/kernel"], block[f"attn/{part}/bias"] = kernels[i], biases[i]
  proj = w.take(f"{name}.attn.proj.weight")
  if proj is not None:
    block["attn/out/kernel"] = proj.T.reshape(num_heads, -1, proj.shape[0])
  block["attn/out/bias"] = w.take(f"{name}.attn.proj.bias")
  w.dense(f"{name}.mlp.fc1", block, "mlp/wi")
  w.dense(f"{name}.mlp.fc2", block, "mlp/wo")
  return block


def _stack(w: Weights, side: str, depth: int, num_heads: int, out: dict) -> None:
  blocks = [_vit_block(w, f"{side}_blocks.{i}", num_heads) for i in range(depth)]
  for key in blocks[0] if blocks else ():
    if all(b.get(key) is not None for b in blocks):
      out[f"{side}/layers/{key}"] = stack([b[key] for b in blocks])
  w.norm(f"{side}_norm", out, f"{side}/final_norm")


def _head(w: Weights, depth: int, out: dict) -> None:
  net = "diffloss.net"
  w.dense(f"{net}.time_embed.mlp.0", out, "head/time_fc1")
  w.dense(f"{net}.time_embed.mlp.2", out, "head/time_fc2")
  w.dense(f"{net}.cond_embed", out, "head/cond_embed")
  w.dense(f"{net}.input_proj", out, "head/input_proj")
  for i in range(depth):
    block = f"{net}.res_blocks.{i}"
    w.norm(f"{block}.in_ln", out, f"head/block_{i}_norm")
    w.dense(f"{block}.mlp.0", out, f"head/block_{i}_fc1")
    w.dense(f"{block}.mlp.2", out, f"head/block_{i}_fc2")
    w.dense(f"{block}.adaLN_modulation.1", out, f"head/block_{i}_modulation")
  w.dense(f"{net}.final_layer.linear", out, "head/out")
  w.dense(f"{net}.final_layer.adaLN_modulation.1", out, "head/final_modulation")


def mar_params(w: Weights, fields: dict) -> dict:
  """The MAR params tree from the authors' state dict names."""
  out: dict = {"class_embed": w.take("class_emb.weight")}
  for name, key in (("fake_latent", "fake_latent"), ("mask_token", "mask_token")):
    value = w.take(name)  # [1, E] and [1, 1, E]
    out[key] = None if value is None else value.reshape(-1)
  for name, key in (("encoder_pos_embed_learned", "encoder_pos"),
                    ("decoder_pos_embed_learned", "decoder_pos"),
                    ("diffusion_pos_embed_learned", "diffusion_pos")):
    value = w.take(name)  # [1, S, E]
    out[key] = None if value is None else value[0]
  w.dense("z_proj", out, "z_proj")
  w.norm("z_proj_ln", out, "z_proj_norm")
  w.dense("decoder_embed", out, "decoder_embed")
  for side in ("encoder", "decoder"):
    _stack(w, side, fields["depth"], fields["num_heads"], out)
  _head(w, fields["head_depth"], out)
  return nest(out)


def mar_fields(w: Weights, num_heads: int | None, token_shape) -> dict:
  """MAR's sizes read off the state dict; heads are not in the shapes (MAR-B: 12, L / H: 16)."""
  classes, width = w.shape("class_emb.weight")
  tokens = w.shape("diffusion_pos_embed_learned")[1]
  if int(token_shape[0]) * int(token_shape[1]) != tokens:
    raise ValueError(f"token_shape {tuple(token_shape)} does not hold the checkpoint's "
                     f"{tokens} tokens")
  if num_heads is None:
    num_heads = 12 if width == 768 else 16
  return {"token_shape": [int(s) for s in token_shape],
          "token_dim": w.shape("z_proj.weight")[1], "num_classes": classes, "width": width,
          "depth": w.num_indexed("encoder_blocks."), "num_heads": int(num_heads),
          "buffer_size": w.shape("encoder_pos_embed_learned")[1] - tokens,
          "head_width": w.shape("diffloss.net.input_proj.weight")[0],
          "head_depth": w.num_indexed("diffloss.net.res_blocks.")}


def build_mar(w: Weights, *, token_shape=(16, 16), num_heads: int | None = None,
              latent_scale: float = 0.2325, tokenizer: str | None = None
              ) -> tuple[dict, dict]:
  """A MAR state dict -> (generator run config, variables)."""
  if isinstance(token_shape, str):
    token_shape = [int(s) for s in token_shape.replace(",", " ").split()]
  fields = mar_fields(w, num_heads, token_shape)
  if w.num_indexed("decoder_blocks.") != fields["depth"]:
    raise ValueError(f"encoder and decoder depths differ ({fields['depth']} and "
                     f"{w.num_indexed('decoder_blocks.')}); jaxtok's MAR has one depth")
  model = {"name": "mar.MAR", **fields}
  preset = {768: "MAR-B", 1024: "MAR-L", 1280: "MAR-H"}.get(fields["width"])
  if preset is not None:
    base = {"token_shape": [16, 16], "token_dim": 16, "num_classes": 1000, "buffer_size": 64,
            **MAR.PRESETS[preset]}
    if all(base[k] == fields[k] for k in ("width", "depth", "num_heads")):
      model = {"name": "mar.MAR", "preset": preset,
               **{k: v for k, v in fields.items() if base.get(k) != v}}
  if not (isinstance(latent_scale, (int, float)) and not isinstance(latent_scale, bool)
          and math.isfinite(latent_scale) and latent_scale > 0):
    raise ValueError(f"latent_scale must be a finite number > 0 (MAR's vae_scale_factor: "
                     f"0.2325); got {latent_scale!r}")
  model["latent_scale"] = float(latent_scale)
  config = {"trainer": "mar", "seed": 0, "model": model, "train": {"compute_dtype": "float32"}}
  rows, cols = fields["token_shape"]
  kl16 = (mar_vae.kl16_config(16 * rows)
          if rows == cols and fields["token_dim"] == mar_vae.EMBED_DIM else None)
  entry = paired_tokenizer(kl16, tokenizer, fields["token_shape"], codebook_size=0,
                           code_dim=fields["token_dim"])
  if entry is not None:
    config["tokenizer"] = entry
  return config, {"params": mar_params(w, fields)}


def _mar(name: str, size: str, params: str) -> Source:
  return Source(f"mar-{name}", ("checkpoint-last.pth",),
                f"MAR-{size} (Li et al. 2024), {params} params, ImageNet 256^2, 16x16 latents "
                f"of 16 channels (MAR's KL-16 VAE)", build_mar,
                options=("token_shape", "num_heads", "latent_scale", "tokenizer"))


SOURCES = (_mar("b", "B", "208 M"), _mar("l", "L", "479 M"), _mar("h", "H", "943 M"))
