"""Convolutional building blocks of the taming / LlamaGen VQGAN (Esser et al. 2021).

Layout NHWC. Shape letters: B batch, H W height and width, C channels, T = H*W positions.
Parameter names follow taming / LlamaGen (`norm1`, `conv1`, `nin_shortcut`, `q`, `k`, `v`,
`proj_out`, `conv`) so that PyTorch weights convert by renaming and transposing only:
a PyTorch conv weight [C_out, C_in, kh, kw] is our kernel [kh, kw, C_in, C_out]; GroupNorm's
`weight` is our `scale`.

Parameters are f32 (`param_dtype`) and carry logical axis names for sharding; `dtype` is the
compute dtype. GroupNorm statistics and attention softmax are always computed in f32.
"""

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default conv init (kaiming_uniform with a=sqrt(5)) is U(+-1/sqrt(fan_in)), i.e.
# variance 1/(3 fan_in); taming / LlamaGen train from it, so we start from the same scale.
_TORCH_CONV_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

NORM_AXES = ("norm",)


def conv2d(features: int, kernel_size: int, *, strides: int = 1, padding: Any = "SAME",
           use_bias: bool = True, dtype: Dtype = jnp.float32,
           in_axis: str | None = "conv_in", out_axis: str | None = "conv_out",
           name: str | None = None) -> nn.Conv:
  """A square nn.Conv with f32 params annotated (None, None, in_axis, out_axis).

  Pass in_axis / out_axis None for thin sides (3 image channels, a quantizer's few latent
  channels) that no mesh axis should split. "SAME" with stride 1 pads (k-1)/2 on each side,
  as PyTorch's padding=k//2 for odd k.
  """
  return nn.Conv(
      features, (kernel_size, kernel_size), strides=(strides, strides), padding=padding,
      use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(_TORCH_CONV_INIT, (None, None, in_axis, out_axis)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (out_axis,)),
      name=name)


def swish(x: jax.Array) -> jax.Array:
  """x * sigmoid(x), the VQGAN nonlinearity."""
  return x * jax.nn.sigmoid(x)


class GroupNorm(nn.Module):
  """GroupNorm over the last (channel) axis with f32 statistics, as torch.nn.GroupNorm.

  Groups are contiguous channel blocks (channel c is in group c // (C / G)), like PyTorch.
  """

  num_groups: int = 32  # taming / LlamaGen / MaskGIT all use 32
  epsilon: float = 1e-6  # taming / LlamaGen use 1e-6 (PyTorch's default is 1e-5)
  dtype: Dtype = jnp.float32  # output dtype

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    channels = x_BHWC.shape[-1]
    if channels % self.num_groups:
      raise ValueError(
          f"GroupNorm needs channels divisible by num_groups={self.num_groups}; got "
          f"{channels} channels")
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(),
                                                             NORM_AXES), (channels,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           NORM_AXES), (channels,))
    x = x_BHWC.astype(jnp.float32)
    grouped = x.reshape(*x.shape[:-1], self.num_groups, channels // self.num_groups)
    reduce_axes = tuple(range(1, grouped.ndim - 2)) + (grouped.ndim - 1,)  # spatial + in-group
    mean = grouped.mean(axis=reduce_axes, keepdims=True)
    var = jnp.square(grouped - mean).mean(axis=reduce_axes, keepdims=True)
    normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    channel_axes = tuple(range(x.ndim - 1))  # [C] -> [1, ..., 1, C]
    return (normed * jnp.expand_dims(scale, channel_axes)
            + jnp.expand_dims(bias, channel_axes)).astype(self.dtype)


class ResnetBlock(nn.Module):
  """norm-swish-conv3x3 twice, plus a (1x1-projected when C changes) shortcut."""

  features: int  # output channels
  conv_bias: bool = True  # taming / LlamaGen: True; MaskGIT: False (its convs have no bias)
  # MaskGIT's ResBlock applies its 1x1 shortcut to the residual branch's output instead of
  # the block input (out = h + W h, W of shape [1, 1, C_out, C_out]). Reproduced here so its
  # weights convert unchanged.
  shortcut_from_output: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    h = swish(GroupNorm(dtype=self.dtype, name="norm1")(x_BHWC))
    h = conv2d(self.features, 3, use_bias=self.conv_bias, dtype=self.dtype, name="conv1")(h)
    h = swish(GroupNorm(dtype=self.dtype, name="norm2")(h))
    # LlamaGen has dropout here with p=0.0 in every preset; omitted.
    h = conv2d(self.features, 3, use_bias=self.conv_bias, dtype=self.dtype, name="conv2")(h)
    shortcut = x_BHWC.astype(self.dtype)
    if x_BHWC.shape[-1] != self.features:
      nin = conv2d(self.features, 1, use_bias=self.conv_bias, dtype=self.dtype,
                   name="nin_shortcut")
      shortcut = nin(h) if self.shortcut_from_output else nin(shortcut)
    return shortcut + h


class AttnBlock(nn.Module):
  """Single-head self-attention over all H*W positions with 1x1-conv projections."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    batch, height, width, channels = x_BHWC.shape
    h = GroupNorm(dtype=self.dtype, name="norm")(x_BHWC)
    q, k, v = (conv2d(channels, 1, dtype=self.dtype, name=n)(h).reshape(batch, -1, channels)
               for n in ("q", "k", "v"))
    logits_BTT = jnp.einsum("bqc,bkc->bqk", q, k, preferred_element_type=jnp.float32)
    weights_BTT = jax.nn.softmax(logits_BTT * channels**-0.5, axis=-1).astype(self.dtype)
    out_BTC = jnp.einsum("bqk,bkc->bqc", weights_BTT, v)
    out = conv2d(channels, 1, dtype=self.dtype, name="proj_out")(
        out_BTC.reshape(batch, height, width, channels))
    return x_BHWC.astype(self.dtype) + out


class Downsample(nn.Module):
  """Halves H and W: a stride-2 3x3 conv after padding bottom/right by one (taming), or a
  parameter-free 2x2 average pool (MaskGIT's conv_downsample=False)."""

  mode: Literal["conv", "avgpool"] = "conv"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    if self.mode == "conv":
      return conv2d(x_BHWC.shape[-1], 3, strides=2, padding=((0, 1), (0, 1)),
                    dtype=self.dtype, name="conv")(x_BHWC)
    if self.mode == "avgpool":
      b, h, w, c = x_BHWC.shape
      pooled = x_BHWC.astype(jnp.float32).reshape(b, h // 2, 2, w // 2, 2, c).mean((2, 4))
      return pooled.astype(self.dtype)
    raise ValueError(f"Downsample mode must be 'conv' or 'avgpool'; got {self.mode!r}")


class Upsample(nn.Module):
  """Doubles H and W by nearest-neighbour repetition, then a 3x3 conv."""

  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    x = jnp.repeat(jnp.repeat(x_BHWC, 2, axis=1), 2, axis=2)
    return conv2d(x_BHWC.shape[-1], 3, dtype=self.dtype, name="conv")(x)
