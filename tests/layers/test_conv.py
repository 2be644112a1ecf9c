"""Conv blocks against NCHW numpy references written from taming / LlamaGen's PyTorch code.

Each block gets PyTorch-layout weights ([C_out, C_in, kh, kw] convs, GroupNorm weight/bias),
converted by transposing only, so these tests also pin down the weight conversion.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.layers import conv as L

RNG = np.random.default_rng(0)


# ------------------------------------------------------------ NCHW numpy references (PyTorch)

def torch_conv(x, w, b, *, stride=1, pad=(0, 0, 0, 0)):
  """F.conv2d on NCHW x with weight [O, I, kh, kw]; pad = (top, bottom, left, right)."""
  top, bottom, left, right = pad
  x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
  kh, kw = w.shape[2:]
  out_h = (x.shape[2] - kh) // stride + 1
  out_w = (x.shape[3] - kw) // stride + 1
  out = np.zeros((x.shape[0], w.shape[0], out_h, out_w))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, :, i:i + stride * out_h:stride, j:j + stride * out_w:stride]
      out += np.einsum("bihw,oi->bohw", patch, w[:, :, i, j])
  return out + (0 if b is None else b[None, :, None, None])


def torch_group_norm(x, weight, bias, groups=32, eps=1e-6):
  b, c, h, w = x.shape
  g = x.reshape(b, groups, -1)
  g = (g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)
  return g.reshape(b, c, h, w) * weight[None, :, None, None] + bias[None, :, None, None]


def swish(x):
  return x / (1 + np.exp(-x))


def torch_resnet_block(x, p):
  h = torch_conv(swish(torch_group_norm(x, *p["norm1"])), *p["conv1"], pad=(1, 1, 1, 1))
  h = torch_conv(swish(torch_group_norm(h, *p["norm2"])), *p["conv2"], pad=(1, 1, 1, 1))
  if "nin_shortcut" in p:
    x = torch_conv(x, *p["nin_shortcut"])
  return x + h


def torch_attn_block(x, p):
  b, c, hh, ww = x.shape
  h = torch_group_norm(x, *p["norm"])
  q, k, v = (torch_conv(h, *p[n]).reshape(b, c, -1) for n in "qkv")
  w = np.einsum("bci,bcj->bij", q, k) * c**-0.5  # w[b, i, j] = <q_i, k_j>
  w = np.exp(w - w.max(2, keepdims=True))
  w /= w.sum(2, keepdims=True)
  out = np.einsum("bcj,bij->bci", v, w).reshape(b, c, hh, ww)
  return x + torch_conv(out, *p["proj_out"])


# ------------------------------------------------------------ PyTorch weights -> Flax params

def torch_conv_weights(c_in, c_out, k, bias=True):
  return (RNG.normal(size=(c_out, c_in, k, k)) / np.sqrt(c_in * k * k),
          RNG.normal(size=(c_out,)) * 0.1 if bias else None)


def torch_norm_weights(c):
  return (1 + 0.1 * RNG.normal(size=(c,)), 0.1 * RNG.normal(size=(c,)))


def to_flax(p):
  """{name: (weight, bias)} PyTorch -> Flax params: rename and transpose only."""
  out = {}
  for name, (w, b) in p.items():
    if w.ndim == 4:
      out[name] = {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0), jnp.float32)}
      if b is not None:
        out[name]["bias"] = jnp.asarray(b, jnp.float32)
    else:
      out[name] = {"scale": jnp.asarray(w, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}
  return out


def nchw(x):
  return np.asarray(x, np.float64).transpose(0, 3, 1, 2)


def run(module, params, x_nchw):
  y = module.apply({"params": params}, jnp.asarray(x_nchw.transpose(0, 2, 3, 1), jnp.float32))
  return nchw(y)


@pytest.mark.parametrize("c_in,c_out", [(32, 32), (32, 64)])
def test_resnet_block_matches_torch_layout(c_in, c_out):
  p = {"norm1": torch_norm_weights(c_in), "conv1": torch_conv_weights(c_in, c_out, 3),
       "norm2": torch_norm_weights(c_out), "conv2": torch_conv_weights(c_out, c_out, 3)}
  if c_in != c_out:
    p["nin_shortcut"] = torch_conv_weights(c_in, c_out, 1)
  x = RNG.normal(size=(2, c_in, 6, 5))
  got = run(L.ResnetBlock(c_out), to_flax(p), x)
  np.testing.assert_allclose(got, torch_resnet_block(x, p), atol=2e-4, rtol=2e-4)


def test_resnet_block_maskgit_shortcut_quirk():
  # MaskGIT projects the branch output h (no biases): out = h + W h, W [C_out, C_out].
  p = {"norm1": torch_norm_weights(32), "conv1": torch_conv_weights(32, 64, 3, bias=False),
       "norm2": torch_norm_weights(64), "conv2": torch_conv_weights(64, 64, 3, bias=False),
       "nin_shortcut": torch_conv_weights(64, 64, 1, bias=False)}
  x = RNG.normal(size=(1, 32, 4, 4))
  got = run(L.ResnetBlock(64, conv_bias=False, shortcut_from_output=True), to_flax(p), x)
  h = torch_conv(swish(torch_group_norm(x, *p["norm1"])), *p["conv1"], pad=(1, 1, 1, 1))
  h = torch_conv(swish(torch_group_norm(h, *p["norm2"])), *p["conv2"], pad=(1, 1, 1, 1))
  np.testing.assert_allclose(got, h + torch_conv(h, *p["nin_shortcut"]), atol=2e-4, rtol=2e-4)


def test_attn_block_matches_torch_layout():
  p = {"norm": torch_norm_weights(32), **{n: torch_conv_weights(32, 32, 1)
                                          for n in ("q", "k", "v", "proj_out")}}
  x = RNG.normal(size=(2, 32, 3, 4))
  got = run(L.AttnBlock(), to_flax(p), x)
  np.testing.assert_allclose(got, torch_attn_block(x, p), atol=2e-4, rtol=2e-4)


def test_downsample_pads_bottom_right_like_taming():
  p = {"conv": torch_conv_weights(32, 32, 3)}
  x = RNG.normal(size=(1, 32, 8, 6))
  got = run(L.Downsample("conv"), to_flax(p), x)
  want = torch_conv(x, *p["conv"], stride=2, pad=(0, 1, 0, 1))
  assert got.shape == (1, 32, 4, 3)
  np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)


def test_downsample_avgpool_and_upsample_nearest():
  x = RNG.normal(size=(1, 4, 6, 32))
  pooled = L.Downsample("avgpool").apply({}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(pooled, x.reshape(1, 2, 2, 3, 2, 32).mean((2, 4)), atol=1e-5)
  p = {"conv": torch_conv_weights(32, 32, 3)}
  got = run(L.Upsample(), to_flax(p), nchw(x))
  nearest = nchw(x).repeat(2, axis=2).repeat(2, axis=3)
  np.testing.assert_allclose(got, torch_conv(nearest, *p["conv"], pad=(1, 1, 1, 1)),
                             atol=2e-4, rtol=2e-4)


def test_group_norm_bf16_input_uses_f32_statistics():
  # A large common offset would wipe out bf16 statistics; f32 statistics keep the output right.
  x = RNG.normal(size=(2, 4, 4, 64)) + 50.0
  weight, bias = torch_norm_weights(64)
  params = to_flax({"n": (weight, bias)})["n"]
  got = L.GroupNorm(dtype=jnp.bfloat16).apply({"params": params},
                                              jnp.asarray(x, jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  want = torch_group_norm(nchw(np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)),
                          weight, bias)
  np.testing.assert_allclose(nchw(np.asarray(got, np.float64)), want, atol=0.05, rtol=0.02)


def test_group_norm_rejects_channels_not_divisible_by_groups():
  with pytest.raises(ValueError, match="divisible by num_groups=32"):
    L.GroupNorm().init(jax.random.key(0), jnp.zeros((1, 2, 2, 48)))


def test_params_carry_logical_axis_names():
  abstract = jax.eval_shape(L.ResnetBlock(64).init, jax.random.key(0), jnp.zeros((1, 4, 4, 32)))
  specs = nn.get_partition_spec(abstract)["params"]
  assert tuple(specs["conv1"]["kernel"]) == (None, None, "conv_in", "conv_out")
  assert tuple(specs["conv1"]["bias"]) == ("conv_out",)
  assert tuple(specs["nin_shortcut"]["kernel"]) == (None, None, "conv_in", "conv_out")
  assert tuple(specs["norm1"]["scale"]) == ("norm",)
