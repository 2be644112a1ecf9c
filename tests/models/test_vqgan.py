"""VQGAN: layout and parameter counts of the full-size presets (eval_shape only), tiny-width
forward passes of every preset, gradients in f32 and bf16."""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxtok.models.tokenizers.vqgan import VQGAN
from jaxtok.quantizers.base import QuantizerOutput
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.vq import VectorQuantizer

# RBG keys: on the CPU, XLA compiles threefry initializers of ~150 params for minutes.
KEY = jax.random.key(0, impl="rbg")


def abstract_params(model, image_size):
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, KEY, images)
  return traverse_util.flatten_dict(nn.meta.unbox(variables["params"]), sep="/")


# ------------------------------------------- LlamaGen's parameters, from its vq_model.py

def llamagen_torch_shapes(ch_mult, ch=128, num_res_blocks=2, z_channels=256, embed_dim=8,
                          codebook_size=16384) -> dict[str, tuple[int, ...]]:
  """Names and shapes of LlamaGen's VQModel state_dict (parameters only), written out from
  FoundationVision/LlamaGen tokenizer/tokenizer_image/vq_model.py."""
  shapes = {}

  def conv(name, c_in, c_out, k):
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

  def norm(name, c):
    shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c,), (c,)

  def res(name, c_in, c_out):
    norm(f"{name}.norm1", c_in), conv(f"{name}.conv1", c_in, c_out, 3)
    norm(f"{name}.norm2", c_out), conv(f"{name}.conv2", c_out, c_out, 3)
    if c_in != c_out:
      conv(f"{name}.nin_shortcut", c_in, c_out, 1)

  def attn(name, c):
    norm(f"{name}.norm", c)
    for n in ("q", "k", "v", "proj_out"):
      conv(f"{name}.{n}", c, c, 1)

  levels = len(ch_mult)
  conv("encoder.conv_in", 3, ch, 3)
  in_mult = (1,) + tuple(ch_mult)
  for i in range(levels):
    block_in, block_out = ch * in_mult[i], ch * ch_mult[i]
    for j in range(num_res_blocks):
      res(f"encoder.conv_blocks.{i}.res.{j}", block_in, block_out)
      block_in = block_out
      if i == levels - 1:
        attn(f"encoder.conv_blocks.{i}.attn.{j}", block_in)
    if i != levels - 1:
      conv(f"encoder.conv_blocks.{i}.downsample.conv", block_in, block_in, 3)
  res("encoder.mid.0", block_in, block_in), attn("encoder.mid.1", block_in)
  res("encoder.mid.2", block_in, block_in)
  norm("encoder.norm_out", block_in), conv("encoder.conv_out", block_in, z_channels, 3)

  block_in = ch * ch_mult[-1]
  conv("decoder.conv_in", z_channels, block_in, 3)
  res("decoder.mid.0", block_in, block_in), attn("decoder.mid.1", block_in)
  res("decoder.mid.2", block_in, block_in)
  for n, i in enumerate(reversed(range(levels))):
    block_out = ch * ch_mult[i]
    for j in range(num_res_blocks + 1):
      res(f"decoder.conv_blocks.{n}.res.{j}", block_in, block_out)
      block_in = block_out
      if i == levels - 1:
        attn(f"decoder.conv_blocks.{n}.attn.{j}", block_in)
    if i != 0:
      conv(f"decoder.conv_blocks.{n}.upsample.conv", block_in, block_in, 3)
  norm("decoder.norm_out", block_in), conv("decoder.conv_out", block_in, 3, 3)

  conv("quant_conv", z_channels, embed_dim, 1), conv("post_quant_conv", embed_dim, z_channels, 1)
  shapes["quantize.embedding.weight"] = (codebook_size, embed_dim)
  return shapes


def torch_to_flax(name: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
  """The whole conversion: `.N` list indices become `_N` suffixes, conv weights are
  transposed to HWIO and called kernel, norm weights scale, the embedding the codebook."""
  if name == "quantize.embedding.weight":
    return "quantizer/codebook", shape
  parts = []
  for p in name.split("."):
    if p.isdigit():
      parts[-1] += f"_{p}"
    else:
      parts.append(p)
  if parts[-1] == "weight":
    parts[-1] = "kernel" if len(shape) == 4 else "scale"
  if len(shape) == 4:
    shape = tuple(shape[i] for i in (2, 3, 1, 0))
  return "/".join(parts), shape


@pytest.mark.parametrize("preset,ch_mult,published_millions", [
    ("llamagen-vq16", (1, 1, 2, 2, 4), 72),  # LlamaGen README: vq_ds16_c2i "72M"
    ("llamagen-vq8", (1, 2, 2, 4), 70),  # LlamaGen README: vq_ds8_c2i "70M"
])
def test_llamagen_layout_converts_by_renaming_and_transposing(preset, ch_mult,
                                                              published_millions):
  quantizer = VectorQuantizer(codebook_size=16384, dim=8, metric="cosine")
  ours = abstract_params(VQGAN.from_preset(preset, quantizer=quantizer), 256)
  theirs = dict(torch_to_flax(n, s) for n, s in llamagen_torch_shapes(ch_mult).items())
  assert {k: tuple(v.shape) for k, v in ours.items()} == theirs
  count = sum(int(np.prod(s)) for s in theirs.values())
  assert round(count / 1e6) == published_millions
  assert count == {"llamagen-vq16": 71_883_403, "llamagen-vq8": 70_109_835}[preset]


def maskgit_param_count(filters=128, mults=(1, 1, 2, 2, 4), num_res_blocks=2, embed_dim=256,
                        codebook_size=1024) -> int:
  """Parameters of google-research/maskgit nets/vqgan_tokenizer.py VQVAE, counted from its
  code: bias-free ResBlock convs, 1x1 shortcut [C_out, C_out], avg-pool downsampling, no
  attention, encoder conv_in without bias, 1x1 encoder output conv."""
  def conv(c_in, c_out, k, bias=True):
    return k * k * c_in * c_out + (c_out if bias else 0)

  def res(c_in, c_out):
    return (2 * c_in + conv(c_in, c_out, 3, False) + 2 * c_out + conv(c_out, c_out, 3, False)
            + (conv(c_out, c_out, 1, False) if c_in != c_out else 0))

  total, c = conv(3, filters, 3, False), filters
  for m in mults:
    for _ in range(num_res_blocks):
      total, c = total + res(c, filters * m), filters * m
  total += num_res_blocks * res(c, c) + 2 * c + conv(c, embed_dim, 1)
  c = filters * mults[-1]
  total += conv(embed_dim, c, 3) + num_res_blocks * res(c, c)
  for i in reversed(range(len(mults))):
    for _ in range(num_res_blocks):
      total, c = total + res(c, filters * mults[i]), filters * mults[i]
    total += conv(c, c, 3) if i > 0 else 0
  return total + 2 * c + conv(c, 3, 3) + codebook_size * embed_dim


def test_maskgit_param_count():
  quantizer = VectorQuantizer(codebook_size=1024, dim=256)
  ours = abstract_params(VQGAN.from_preset("maskgit-f16", quantizer=quantizer), 256)
  count = sum(int(np.prod(v.shape)) for v in ours.values())
  # 54,515,587 is also what google-research/maskgit's own VQVAE (configs/vqgan_config.py)
  # gives under jax.eval_shape.
  assert count == maskgit_param_count() == 54_515_587
  assert "quant_conv/kernel" not in ours and ours["quantizer/codebook"].shape == (1024, 256)


def test_presets_table():
  presets = VQGAN.PRESETS
  assert set(presets) >= {"llamagen-vq16", "llamagen-vq8", "maskgit-f16", "tiny"}
  assert presets["llamagen-vq16"]["config"].downsample_factor == 16
  assert presets["llamagen-vq8"]["config"].downsample_factor == 8
  assert presets["maskgit-f16"]["config"].downsample_factor == 16
  with pytest.raises(ValueError, match="unknown VQGAN preset"):
    VQGAN.from_preset("vq-16", quantizer=VectorQuantizer(codebook_size=4, dim=4))
  with pytest.raises(ValueError, match="'chanels'"):
    VQGAN.from_preset("tiny", quantizer=VectorQuantizer(codebook_size=4, dim=4),
                      config={"chanels": 3})


def test_widths_must_suit_group_norm():
  model = VQGAN.from_preset("tiny", quantizer=VectorQuantizer(codebook_size=4, dim=4),
                            config={"ch": 16})
  with pytest.raises(ValueError, match="divisible by 32"):
    jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))


def test_params_carry_logical_axis_names():
  model = VQGAN.from_preset("tiny", quantizer=VectorQuantizer(codebook_size=4, dim=8))
  variables = jax.eval_shape(model.init, KEY, jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32))
  specs = traverse_util.flatten_dict(nn.get_partition_spec(variables)["params"], sep="/")
  ours = {n: tuple(s) for n, s in specs.items() if not n.startswith("quantizer/")}
  # Thin sides (3 image channels, the quantizer's channels) are never split.
  thin = {"encoder/conv_in/kernel": (None, None, None, "conv_out"),
          "decoder/conv_out/kernel": (None, None, "conv_in", None),
          "decoder/conv_out/bias": (None,),
          "quant_conv/kernel": (None, None, "conv_in", None), "quant_conv/bias": (None,),
          "post_quant_conv/kernel": (None, None, None, "conv_out")}
  assert len(ours) > 50
  for name, spec in ours.items():
    if name in thin:
      assert spec == thin[name], name
    elif name.endswith("/kernel"):
      assert spec == (None, None, "conv_in", "conv_out"), name
    elif name.endswith("/scale") or name.replace("/bias", "/scale") in ours:
      assert spec == ("norm",), name  # GroupNorm scale and bias
    else:
      assert spec == ("conv_out",), name  # conv bias


def test_init_shards_over_a_mesh_with_logical_rules():
  # 8 fake CPU devices (conftest); every conv width and thin side must divide or stay whole.
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  rules = [("conv_in", "fsdp"), ("conv_out", "tensor"), ("norm", None)]
  model = VQGAN.from_preset("tiny", quantizer=FSQ(levels=(5, 5, 5)),
                            config={"ch_mult": (1,), "attention": False})
  images = jnp.zeros((2, 8, 8, 3))
  abstract = jax.eval_shape(model.init, KEY, images)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(abstract), mesh, rules)
  with jax.set_mesh(mesh):
    variables = jax.jit(model.init, out_shardings=shardings)(KEY, images)
  kernel = variables["params"]["encoder"]["conv_blocks_0"]["res_0"]["conv1"]["kernel"].value
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, None, "fsdp", "tensor")


# ------------------------------------------- every preset at tiny width

@pytest.mark.parametrize("preset,size", [
    ("llamagen-vq16", 32), ("llamagen-vq8", 16), ("maskgit-f16", 32), ("tiny", 16)])
def test_every_preset_runs_at_tiny_width(preset, size):
  overrides = {} if preset == "tiny" else {"ch": 32, "num_res_blocks": 1, "decoder_res_blocks": 1}
  if preset.startswith("llamagen"):
    overrides["z_channels"] = 32
  quantizer = VectorQuantizer(codebook_size=64, dim=8 if preset != "maskgit-f16" else 32,
                              metric="cosine" if preset.startswith("llamagen") else "l2")
  model = VQGAN.from_preset(preset, quantizer=quantizer, config=overrides)
  images = jax.random.uniform(jax.random.key(1), (2, size, size, 3), minval=-1, maxval=1)
  out = jax.jit(lambda x: model.apply(model.init(KEY, x), x))(images)
  grid = model.token_shape(images.shape)
  assert grid == (size // model.downsample_factor,) * 2
  assert isinstance(out.quantizer_output, QuantizerOutput)
  chex.assert_shape([out.reconstruction, out.quantizer_output.quantized,
                     out.quantizer_output.indices],
                    [images.shape, (2, *grid, quantizer.code_dim), (2, *grid)])
  chex.assert_type([out.reconstruction, out.quantizer_output.indices], [jnp.float32, jnp.int32])
  chex.assert_tree_all_finite(out)


# ------------------------------------------- gradients and compute dtype

def tiny_model(dtype):
  return VQGAN.from_preset("tiny", quantizer=VectorQuantizer(codebook_size=32, dim=8),
                           dtype=dtype)


@pytest.fixture(scope="module")
def tiny_params():
  images = jnp.zeros((2, 16, 16, 3))
  return jax.jit(tiny_model(jnp.float32).init)(KEY, images)["params"]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_finite_in_f32_and_bf16_compute(tiny_params, dtype):
  model = tiny_model(dtype)  # same params whatever the compute dtype
  images = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3), minval=-1, maxval=1)

  def loss_fn(params):
    out = model.apply({"params": params}, images, train=True)
    rec = jnp.mean(jnp.square(out.reconstruction - images))
    return rec + out.quantizer_output.loss, out

  g, out = jax.jit(jax.grad(loss_fn, has_aux=True))(tiny_params)
  chex.assert_type(out.reconstruction, jnp.float32)
  chex.assert_tree_all_finite((out, g))
  flat = traverse_util.flatten_dict(nn.meta.unbox(g), sep="/")
  chex.assert_type(list(flat.values()), jnp.float32)
  # The straight-through estimator carries the reconstruction gradient into the encoder.
  assert float(jnp.abs(flat["encoder/conv_in/kernel"]).max()) > 0
  assert float(jnp.abs(flat["quantizer/codebook"]).max()) > 0


def test_remat_changes_no_parameter_and_no_gradient(tiny_params):
  images = jax.random.uniform(jax.random.key(3), (2, 16, 16, 3), minval=-1, maxval=1)
  plain = tiny_model(jnp.float32)
  remat = plain.clone(config=dataclasses.replace(plain.config, remat=True))
  assert (jax.tree.structure(jax.eval_shape(remat.init, KEY, images)["params"])
          == jax.tree.structure(tiny_params))

  def grads(model):
    def loss_fn(params):
      out = model.apply({"params": params}, images, train=True)
      return jnp.mean(jnp.square(out.reconstruction - images)) + out.quantizer_output.loss
    return jax.jit(jax.grad(loss_fn))(tiny_params)

  chex.assert_trees_all_close(grads(remat), grads(plain), rtol=1e-6, atol=1e-7)
