"""GAN discriminators for tokenizer training: PatchGAN (Isola et al. 2017, "Image-to-Image
Translation with Conditional Adversarial Networks") and the StyleGAN2 residual discriminator
(Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Both take NHWC images in [-1, 1], keep parameters in f32, compute in `dtype` and return f32
logits. Feed real and fake images in separate calls, as taming-transformers and StyleGAN do:
BatchNorm (PatchGAN) and minibatch-stddev (StyleGAN) both mix statistics across the batch.

Shapes: B batch, H W height and width, C channels.
"""

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.models.presets import Presets

Dtype = Any


def _check_images(x: jax.Array, name: str) -> None:
  if x.ndim != 4:
    raise ValueError(f"{name} must be NHWC images [B, H, W, C]; got shape {tuple(x.shape)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a float array in [-1, 1]; got dtype {x.dtype}")


def _normal_around_one(stddev: float):
  def init(key, shape, dtype=jnp.float32):
    return 1.0 + stddev * jax.random.normal(key, shape, dtype)
  return init


class PatchGANDiscriminator(Presets, nn.Module):
  """N-layer PatchGAN in the taming-transformers / LlamaGen `NLayerDiscriminator` layout.

  4x4 convs: one stride-2 conv + LeakyReLU(0.2); `num_layers - 1` stride-2 conv + norm +
  LeakyReLU blocks doubling the channels (capped at 8 x base); one stride-1 block; a stride-1
  conv to 1 channel. Returns per-patch logits [B, H', W', 1] (30x30 for 256x256 inputs with
  num_layers=3, 6x6 for 64x64, 2x2 for 32x32).

  Layers are named after the PyTorch `nn.Sequential` indices (`main_0`, `main_2`, `main_3`,
  ...), so a taming / LlamaGen state dict converts by renaming alone:
    main.{i}.weight (O, I, kh, kw) -> params/main_{i}/kernel, transposed to (kh, kw, I, O);
    main.{i}.bias -> params/main_{i}/bias;
    BatchNorm main.{i}.weight / .bias -> params/main_{i}/scale / bias,
    .running_mean / .running_var -> batch_stats/main_{i}/mean / var (num_batches_tracked: drop).

  Normalisation (`norm`):
    "batch": as the original. The convs before it have no bias (as in PyTorch). With
      train=True it normalises by the statistics of the batch at hand and updates the running
      averages: apply with `mutable=["batch_stats"]`. taming keeps the discriminator in training
      mode in both the generator and the discriminator step, so pass train=True in both (and
      drop or keep the batch_stats update of the generator step; taming keeps it). Under jit
      with a batch-sharded input the batch mean is global (GSPMD inserts the all-reduce); no
      axis_name is needed. Flax's running variance is the biased one (PyTorch's is unbiased);
      the difference only shows in train=False use of converted weights.
    "group": GroupNorm(`num_groups`), no state, per-sample: the choice for stateless training.
    "none": no normalisation (convs keep their bias).
  """

  PRESETS = {
      # taming-transformers / LlamaGen NLayerDiscriminator (ndf 64, n_layers 3, BatchNorm).
      "taming": dict(base_features=64, num_layers=3, norm="batch"),
      # For tests and CPU demos: 6x6 logits for 32x32 inputs.
      "tiny": dict(base_features=8, num_layers=2, norm="batch"),
  }

  base_features: int = 64  # ndf: channels of the first conv
  num_layers: int = 3  # n_layers: number of stride-2 convs
  norm: Literal["batch", "group", "none"] = "batch"
  num_groups: int = 32  # GroupNorm groups when norm="group"
  dtype: Dtype = jnp.float32  # compute dtype; params stay f32, logits are f32

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    _check_images(x_BHWC, "x")
    if self.norm not in ("batch", "group", "none"):
      raise ValueError(f"norm must be 'batch', 'group' or 'none'; got {self.norm!r}")
    if self.num_layers < 1:
      raise ValueError(f"num_layers must be >= 1; got {self.num_layers}")
    init = nn.initializers.normal(0.02)
    conv_bias = self.norm != "batch"

    def conv(features, stride, index, use_bias):
      return nn.Conv(features, (4, 4), strides=stride, padding=1, use_bias=use_bias,
                     kernel_init=init, dtype=self.dtype, param_dtype=jnp.float32,
                     name=f"main_{index}")

    def norm(index):
      if self.norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            scale_init=_normal_around_one(0.02), dtype=self.dtype,
                            param_dtype=jnp.float32, name=f"main_{index}")
      if self.norm == "group":
        return nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype,
                            param_dtype=jnp.float32, name=f"main_{index}")
      return lambda h: h

    h = x_BHWC.astype(self.dtype)
    h = nn.leaky_relu(conv(self.base_features, 2, 0, True)(h), 0.2)
    index = 2  # PyTorch Sequential index of the next layer (1 was the LeakyReLU)
    for n in range(1, self.num_layers + 1):
      features = self.base_features * min(2**n, 8)
      stride = 2 if n < self.num_layers else 1
      h = conv(features, stride, index, conv_bias)(h)
      h = nn.leaky_relu(norm(index + 1)(h), 0.2)
      index += 3
    logits = conv(1, 1, index, True)(h)
    return logits.astype(jnp.float32)


def blur_downsample(x_BHWC: jax.Array) -> jax.Array:
  """Depthwise [1, 3, 3, 1] (outer product, normalised) blur with stride 2: H, W halve.

  The anti-aliased downsampling of StyleGAN2 and MaskGIT's BlurPool2D(filter_size=4).
  """
  taps = np.array([1.0, 3.0, 3.0, 1.0])
  kernel = np.outer(taps, taps) / np.sum(np.outer(taps, taps))
  channels = x_BHWC.shape[-1]
  kernel_HWIO = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, channels)), x_BHWC.dtype)
  return jax.lax.conv_general_dilated(
      x_BHWC, kernel_HWIO, window_strides=(2, 2), padding="SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)


def minibatch_stddev(x_BHWC: jax.Array, group_size: int, num_features: int = 1) -> jax.Array:
  """Appends StyleGAN's minibatch standard deviation: [B, H, W, C] -> [B, H, W, C + F].

  Samples b and b + M, b + 2M, ... (M = B / G, G = min(group_size, B)) form a group; for each
  group and each of F channel slices, the std over the group (biased, +1e-8 under the sqrt)
  averaged over H, W and the slice's channels becomes one constant feature map. Computed in f32.
  """
  batch, height, width, channels = x_BHWC.shape
  groups = min(group_size, batch)
  if batch % groups:
    raise ValueError(
        f"minibatch stddev needs the batch divisible by its group size {groups}; got batch "
        f"{batch} (use a multiple of {groups}, or mbstd_group_size=0 to disable)")
  if channels % num_features:
    raise ValueError(
        f"minibatch stddev: channels {channels} not divisible by num_features {num_features}")
  y = x_BHWC.astype(jnp.float32).reshape(
      groups, batch // groups, height, width, num_features, channels // num_features)
  std_MHWFc = jnp.sqrt(jnp.var(y, axis=0) + 1e-8)
  std_MF = jnp.mean(std_MHWFc, axis=(1, 2, 4))
  std_BF = jnp.tile(std_MF, (groups, 1))
  std_BHWF = jnp.broadcast_to(std_BF[:, None, None, :], (batch, height, width, num_features))
  return jnp.concatenate([x_BHWC, std_BHWF.astype(x_BHWC.dtype)], axis=-1)


class _StyleGANResBlock(nn.Module):
  """conv3x3 -> lrelu -> down -> conv3x3 -> lrelu, plus down -> 1x1 skip; sum / sqrt(2)."""

  features: int
  blur: bool
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = nn.initializers.xavier_uniform()
    down = blur_downsample if self.blur else (
        lambda h: nn.avg_pool(h, (2, 2), strides=(2, 2)))
    h = nn.Conv(x.shape[-1], (3, 3), kernel_init=init, dtype=self.dtype,
                param_dtype=jnp.float32, name="conv0")(x)
    h = down(nn.leaky_relu(h, 0.2))
    h = nn.Conv(self.features, (3, 3), kernel_init=init, dtype=self.dtype,
                param_dtype=jnp.float32, name="conv1")(h)
    h = nn.leaky_relu(h, 0.2)
    skip = nn.Conv(self.features, (1, 1), use_bias=False, kernel_init=init, dtype=self.dtype,
                   param_dtype=jnp.float32, name="skip")(down(x))
    return (h + skip) * 2**-0.5


class StyleGANDiscriminator(Presets, nn.Module):
  """StyleGAN2 residual discriminator, in the layout of MaskGIT's / MAGVIT's, plus StyleGAN2's
  minibatch-stddev layer. Returns logits [B] (f32).

  conv3x3 + lrelu at full resolution; one residual block per halving down to 4x4 (blurred
  stride-2 downsampling on both paths); minibatch stddev; conv3x3 + lrelu; dense + lrelu;
  dense to 1. Channels at resolution r are min(max_features, base_features * 256 / r):
  the StyleGAN2 table (64 at 256, 128 at 128, 256 at 64, 512 from 32 down) for the
  defaults; MaskGIT's `channel_multiplier` is base_features / 64. Plain convs with
  Xavier-uniform init as in MaskGIT (no equalised learning rate, no activation gain).

  Images must be square with a power-of-two side >= 4. With the default minibatch-stddev
  group of 4 the batch must be a multiple of min(4, B).
  """

  PRESETS = {
      "tiny": dict(base_features=4, max_features=16),  # for tests and CPU demos
  }

  base_features: int = 64  # channels at 256x256 resolution
  max_features: int = 512  # cap on channels at low resolutions
  blur: bool = True  # downsample by a [1, 3, 3, 1] blur + stride 2; False: 2x2 average pool
  mbstd_group_size: int = 4  # minibatch-stddev group size; 0 disables the layer
  mbstd_num_features: int = 1  # channel slices that each get their own stddev map
  dtype: Dtype = jnp.float32  # compute dtype; params stay f32, logits are f32

  def features_at(self, resolution: int) -> int:
    return max(1, min(self.max_features, self.base_features * 256 // resolution))

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, *, train: bool = False) -> jax.Array:
    # `train` only matches PatchGAN's signature: no batch statistics or dropout here, so both
    # modes compute the same logits.
    del train
    _check_images(x_BHWC, "x")
    size = x_BHWC.shape[1]
    if x_BHWC.shape[2] != size or size < 4 or size & (size - 1):
      raise ValueError(
          "StyleGANDiscriminator needs square images with a power-of-two side >= 4; got "
          f"H, W = {x_BHWC.shape[1]}, {x_BHWC.shape[2]}")
    init = nn.initializers.xavier_uniform()
    dense = dict(kernel_init=init, dtype=self.dtype, param_dtype=jnp.float32)
    h = x_BHWC.astype(self.dtype)
    h = nn.leaky_relu(nn.Conv(self.features_at(size), (3, 3), name="conv_in", **dense)(h), 0.2)
    resolution = size
    while resolution > 4:
      resolution //= 2
      h = _StyleGANResBlock(self.features_at(resolution), self.blur, self.dtype,
                            name=f"block_{resolution}")(h)
    if self.mbstd_group_size > 0:
      h = minibatch_stddev(h, self.mbstd_group_size, self.mbstd_num_features)
    h = nn.leaky_relu(nn.Conv(self.features_at(4), (3, 3), name="conv_out", **dense)(h), 0.2)
    h = h.reshape(h.shape[0], -1)
    h = nn.leaky_relu(nn.Dense(self.features_at(4), name="fc", **dense)(h), 0.2)
    logits = nn.Dense(1, name="logits", **dense)(h)
    return logits[:, 0].astype(jnp.float32)
