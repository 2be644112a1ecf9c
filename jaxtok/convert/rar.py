"""bytedance/1d-tokenizer RAR generators (`rar_b.bin` ... `rar_xxl.bin`), Yu et al. 2024.

Layout (modeling/rar.py): linears transposed; each block's fused `attn.qkv` [3E, E] splits
into query / key / value [E, N, H] (rows ordered (3, heads, head_dim)), `attn.proj` becomes
the [N, H, E] output kernel, `q_norm` / `k_norm` -> query_norm / key_norm, `norm1` / `norm2`
-> attn_norm / mlp_norm, `mlp.fc1` / `fc2` -> mlp/wi / wo, `adaLN_modulation.1` ->
modulation; blocks are stacked on a leading layer axis. `embeddings` (codes, mask, classes,
null class), `cls_token`, `pos_embed`, `target_aware_pos_embed` and `timesteps_embeddings`
keep their rows; `adaln_before_head.adaLN_modulation.1` -> final_modulation, `lm_head` ->
head. The published models read the MaskGIT VQGAN's 16x16 tokens of 1024 codes (convert it
with `--from maskgit-vqgan-torch` or `maskgit-vqgan` to sample): the export's `tokenizer`
entry (what `jaxtok sample` checks) is the config those conversions write, at 16 pixels per
token, or that of the export given as the `tokenizer` option (none by default for a
codebook of other than 1024 codes).
"""

import numpy as np

from jaxtok.convert import maskgit
from jaxtok.convert.common import Source, Weights, nest, paired_tokenizer, stack
from jaxtok.models.generators.rar import RAR


def _block(w: Weights, name: str, num_heads: int) -> dict:
  block: dict = {}
  w.norm(f"{name}.norm1", block, "attn_norm")
  w.norm(f"{name}.norm2", block, "mlp_norm")
  w.norm(f"{name}.attn.q_norm", block, "query_norm")
  w.norm(f"{name}.attn.k_norm", block, "key_norm")
  qkv, bias = w.take(f"{name}.attn.qkv.weight"), w.take(f"{name}.attn.qkv.bias")
  if qkv is not None and bias is not None:
    width = qkv.shape[1]
    head_dim = width // num_heads
    kernels = qkv.reshape(3, num_heads, head_dim, width).transpose(0, 3, 1, 2)  # [3, E, N, H]
    biases = bias.reshape(3, num_heads, head_dim)
    for i, part in enumerate(("query", "key", "value")):
      block[f"{part}/kernel"], block[f"{part}/bias"] = kernels[i], biases[i]
  proj = w.take(f"{name}.attn.proj.weight")  # [E_out, N * H]
  if proj is not None:
    block["out/kernel"] = proj.T.reshape(num_heads, -1, proj.shape[0])
  block["out/bias"] = w.take(f"{name}.attn.proj.bias")
  w.dense(f"{name}.mlp.fc1", block, "mlp/wi")
  w.dense(f"{name}.mlp.fc2", block, "mlp/wo")
  w.dense(f"{name}.adaLN_modulation.1", block, "modulation")
  return block


def rar_params(w: Weights, depth: int, num_heads: int) -> dict:
  """The RAR params tree from the authors' state dict names."""
  out: dict = {"embed/embedding": w.take("embeddings.weight")}
  cls = w.take("cls_token")
  out["cls_token"] = None if cls is None else cls.reshape(-1)
  for name, key in (("pos_embed", "pos_embed"), ("target_aware_pos_embed", "target_pos_embed"),
                    ("timesteps_embeddings", "step_embed")):
    table = w.take(name)
    out[key] = None if table is None else table[0]
  w.dense("adaln_before_head.adaLN_modulation.1", out, "final_modulation")
  w.dense("lm_head", out, "head")
  blocks = [_block(w, f"blocks.{i}", num_heads) for i in range(depth)]
  for key in blocks[0] if blocks else ():
    if all(b.get(key) is not None for b in blocks):
      out[f"blocks/{key}"] = stack([b[key] for b in blocks])
  return nest(out)


def rar_fields(w: Weights, num_heads: int, token_shape) -> dict:
  """RAR's sizes read off the state dict (heads: the q_norm width gives the head width)."""
  rows, width = w.shape("embeddings.weight")
  codes = w.shape("lm_head.weight")[0]
  head_dim = w.shape("blocks.0.attn.q_norm.weight")[0]
  if width % head_dim or (num_heads and num_heads * head_dim != width):
    raise ValueError(f"num_heads={num_heads} does not fit width {width} with head width "
                     f"{head_dim} (q_norm)")
  tokens = int(np.prod(token_shape))
  return {"codebook_size": codes, "token_shape": [int(s) for s in token_shape],
          "num_classes": rows - codes - 2, "width": width,
          "depth": w.num_indexed("blocks."), "num_heads": width // head_dim,
          "mlp_dim": w.shape("blocks.0.mlp.fc1.weight")[0],
          "extra_positions": w.shape("pos_embed")[1] - tokens,
          "extra_steps": w.shape("timesteps_embeddings")[1] - tokens}


def build_rar(w: Weights, *, token_shape=(16, 16), num_heads: int | None = None,
              tokenizer: str | None = None) -> tuple[dict, dict]:
  """A RAR state dict -> (generator run config, variables). token_shape: the tokenizer's
  grid (the checkpoint holds 1024 spare position rows, so it cannot tell)."""
  if isinstance(token_shape, str):
    token_shape = [int(s) for s in token_shape.replace(",", " ").split()]
  fields = rar_fields(w, num_heads, token_shape)
  if min(fields["extra_positions"], fields["extra_steps"]) < 2:
    raise ValueError(f"token_shape {tuple(token_shape)} has more tokens than the checkpoint's "
                     f"position tables hold")
  model = {"name": "rar.RAR", **fields}
  preset = {(768, 24): "RAR-B", (1024, 24): "RAR-L", (1280, 32): "RAR-XL",
            (1408, 40): "RAR-XXL"}.get((fields["width"], fields["depth"]))
  if preset is not None:
    base = {**{k: getattr(RAR, k) for k in ("extra_positions", "extra_steps", "codebook_size",
                                            "num_classes")},
            "token_shape": [16, 16], **RAR.PRESETS[preset]}
    model = {"name": "rar.RAR", "preset": preset,
             **{k: v for k, v in fields.items() if base.get(k) != v}}
  config = {"trainer": "rar", "seed": 0, "model": model, "train": {"compute_dtype": "float32"}}
  rows, cols = fields["token_shape"]
  vqgan = (maskgit.vqgan_config(16 * rows)
           if rows == cols and fields["codebook_size"] == maskgit.CODEBOOK[0] else None)
  entry = paired_tokenizer(vqgan, tokenizer, fields["token_shape"],
                           codebook_size=fields["codebook_size"])
  if entry is not None:
    config["tokenizer"] = entry
  return config, {"params": rar_params(w, fields["depth"], fields["num_heads"])}


def _rar(name: str, params: str) -> Source:
  return Source(f"rar-{name}", (f"rar_{name}.bin",),
                f"RAR-{name.upper()} (Yu et al. 2024), {params} params, ImageNet 256^2, 16x16 "
                f"MaskGIT-VQGAN tokens", build_rar,
                options=("token_shape", "num_heads", "tokenizer"))


SOURCES = (_rar("b", "261 M"), _rar("l", "462 M"), _rar("xl", "955 M"), _rar("xxl", "1.5 B"))
