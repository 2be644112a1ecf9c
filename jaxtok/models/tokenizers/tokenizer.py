"""The Tokenizer API every image tokenizer implements, and the input checks they share.

One API, so that trainers, evaluation and generators handle any tokenizer alike; the quantizer
is a field built by the caller, so any quantizer plugs into any tokenizer. Every tokenizer
checks its inputs with `prepare_images` / `check_tokens`, so errors read the same everywhere.

Shape letters: B batch, H W image height and width, C=3 colour channels, h w the latent grid,
D the quantizer input_dim, E its code_dim.
"""

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.quantizers.base import QuantizerOutput, check_indices

# Float images may overshoot [-1, 1] by this much (bf16 / resize rounding) before we refuse them.
_RANGE_TOLERANCE = 1e-3


class TokenizerOutput(NamedTuple):
  """What `Tokenizer.__call__` returns for training (a pytree)."""

  reconstruction: jax.Array  # [B, H, W, 3] float32, nominally [-1, 1], unclipped
  quantizer_output: QuantizerOutput  # quantized [B, *token_shape, E], indices, loss, metrics


class Tokenizer(nn.Module):
  """Base class of image tokenizers.

  A tokenizer holds a `quantizer: nn.Module` field (any jaxtok quantizer) plus its own
  architecture fields, and implements:

    encode(images, *, return_latents=False) -> indices            (or (indices, latents))
    decode(indices) -> images            (1D tokenizers also accept a prefix of the tokens)
    decode_latents(latents) -> images    decoder on quantizer-space codes (e.g. KL samples)
    __call__(images, *, train=False) -> TokenizerOutput(reconstruction, quantizer_output)
    token_shape(image_shape) -> the token grid: (16, 16) for 256x256 at f16, (32,) for TiTok
    downsample_factor            property: H and W must be divisible by it

  `indices` are int32 [B, *token_shape, *extra], where `extra` is what the quantizer adds per
  token ([L] residual levels, [G] groups, or nothing); `latents` are the quantized codes
  [B, *token_shape, E]. Images are NHWC, floats in [-1, 1] or uint8 (scaled to [-1, 1]).
  Reconstructions are float32, nominally in [-1, 1] but not clipped: clip them for display
  only, since clipping would cut the reconstruction loss's gradient.

  `token_shape` and `downsample_factor` read only module fields, so they work on an unbound
  module: `model.token_shape((256, 256))`. The rest run through `model.apply(variables, ...,
  method=...)`. The base declares no fields so subclasses keep full control of their order.
  """

  @property
  def downsample_factor(self) -> int:
    """H and W of the input images must be divisible by this."""
    raise NotImplementedError

  def token_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
    """The token grid for images of `image_shape` = (H, W), (H, W, C) or (B, H, W, C)."""
    raise NotImplementedError

  def encode(self, images: jax.Array, *, return_latents: bool = False):
    """Images [B, H, W, 3] -> int32 indices, or (indices, latents) if return_latents."""
    raise NotImplementedError

  def decode(self, indices: jax.Array) -> jax.Array:
    """Int indices [B, *token_shape, *extra] -> images [B, H, W, 3] float32."""
    raise NotImplementedError

  def decode_latents(self, latents: jax.Array) -> jax.Array:
    """Quantized codes [B, *token_shape, E] -> images [B, H, W, 3] float32."""
    raise NotImplementedError

  def __call__(self, images: jax.Array, *, train: bool = False) -> TokenizerOutput:
    """Encode, quantize (with the quantizer's training behaviour if train) and decode."""
    raise NotImplementedError


class GridTokenizer(Tokenizer):
  """A tokenizer whose tokens form the (H/f, W/f) grid of its latents, any grid decoding.

  Subclasses give `downsample_factor`, `_latents(images)` (checked images -> f32 quantizer
  inputs z [B, h, w, D]) and `_pixels(codes)` (codes [B, h, w, E] -> f32 images); the API and
  its checks are written once here. Indices are [B, h, w], or [B, h, w, L] for residual /
  grouped quantizers.
  """

  def _latents(self, images) -> jax.Array:
    raise NotImplementedError

  def _pixels(self, codes_BhwE: jax.Array) -> jax.Array:
    raise NotImplementedError

  def token_shape(self, image_shape: Sequence[int]) -> tuple[int, int]:
    """(H/f, W/f) for image_shape (H, W), (H, W, C) or (B, H, W, C)."""
    height, width = spatial_shape(image_shape)
    check_divisible(height, width, self.downsample_factor, shape=image_shape)
    return height // self.downsample_factor, width // self.downsample_factor

  def encode(self, images, *, return_latents: bool = False):
    """Images [B, H, W, 3] -> indices [B, h, w, ...] (and quantized latents [B, h, w, E])."""
    z_BhwD = self._latents(images)
    if return_latents:
      out = self.quantizer(z_BhwD, train=False)
      return out.indices, out.quantized
    return self.quantizer.encode(z_BhwD)

  def decode_latents(self, latents) -> jax.Array:
    """Quantized codes [B, h, w, E] -> images [B, h*f, w*f, 3] float32."""
    shape = tuple(np.shape(latents))
    code_dim = self.quantizer.code_dim
    if len(shape) != 4 or shape[-1] != code_dim:
      raise ValueError(f"latents must be [B, h, w, {code_dim}] (the quantizer's code_dim); "
                       f"got shape {shape}")
    if not jnp.issubdtype(latents.dtype, jnp.floating):
      raise TypeError(f"latents must be floating point; got dtype {latents.dtype}")
    return self._pixels(latents).astype(jnp.float32)

  def decode(self, indices, *, image_shape=None) -> jax.Array:
    """Indices [B, h, w, ...] (as from encode) -> images [B, h*f, w*f, 3] float32.

    Any grid decodes; pass `image_shape` to also require the grid of images of that size.
    """
    if self.quantizer.codebook_size < 1:
      raise TypeError(f"{type(self.quantizer).__name__} has no discrete tokens (codebook_size "
                      f"0): decode its continuous latents with decode_latents")
    shape = tuple(np.shape(indices))
    if image_shape is not None:
      grid = self.token_shape(image_shape)
    elif len(shape) >= 3:
      grid = shape[1:3]
    else:
      raise ValueError(f"indices must be a token grid [B, h, w, ...]; got shape {shape} "
                       f"(reshape flat sequences to [B, *token_shape(image_shape)])")
    check_tokens(indices, token_shape=grid, codebook_size=self.quantizer.codebook_size)
    codes = self.quantizer.indices_to_codes(jnp.asarray(indices))
    expected = (*shape[:3], self.quantizer.code_dim)
    if codes.shape != expected:
      raise ValueError(
          f"indices of shape {shape} do not match the quantizer's index layout: they map to "
          f"codes of shape {codes.shape}, expected {expected}. Pass indices shaped like "
          f"encode's output ([B, h, w], or [B, h, w, L] for residual / grouped quantizers)")
    return self.decode_latents(codes)

  def __call__(self, images, *, train: bool = False) -> TokenizerOutput:
    """Reconstruction [B, H, W, 3] f32 and the QuantizerOutput, for training."""
    quantizer_output = self.quantizer(self._latents(images), train=train)
    return TokenizerOutput(self.decode_latents(quantizer_output.quantized), quantizer_output)


def spatial_shape(image_shape: Sequence[int]) -> tuple[int, int]:
  """(H, W) from (H, W), (H, W, C) or (B, H, W, C); for `token_shape` implementations."""
  shape = tuple(int(s) for s in image_shape)
  if len(shape) == 2:
    return shape
  if len(shape) == 3:
    return shape[:2]
  if len(shape) == 4:
    return shape[1:3]
  raise ValueError(f"image_shape must be (H, W), (H, W, C) or (B, H, W, C); got {shape}")


def check_divisible(height: int, width: int, factor: int, *, shape=None) -> None:
  """Raises a ValueError naming H, W, the factor and the received shape."""
  if height % factor or width % factor:
    received = tuple(shape) if shape is not None else (height, width)
    raise ValueError(
        f"images H={height} and W={width} must both be divisible by the tokenizer's "
        f"downsampling factor {factor}; got shape {received}")


def prepare_images(images, *, factor: int, channels: int = 3) -> jax.Array:
  """Checks an NHWC image batch and returns it as a float array in [-1, 1].

  uint8 is scaled to float32 [-1, 1]; float dtypes are kept as they are. Values of float
  inputs are checked (range, finiteness) only when the array is concrete: under jit, only
  shape and dtype can be checked.
  """
  shape = tuple(np.shape(images))
  if len(shape) != 4:
    raise ValueError(
        f"images must be a 4-D NHWC batch [B, H, W, {channels}]; got shape {shape} "
        f"(add a batch axis with images[None] for a single image)")
  if shape[-1] != channels:
    hint = ""
    if shape[1] == channels:
      hint = " (it looks like NCHW: transpose with images.transpose(0, 2, 3, 1))"
    raise ValueError(
        f"images must be NHWC with {channels} channels last; got shape {shape}{hint}")
  check_divisible(shape[1], shape[2], factor, shape=shape)

  dtype = np.dtype(images.dtype) if hasattr(images, "dtype") else np.asarray(images).dtype
  if dtype == np.uint8:
    return jnp.asarray(images).astype(jnp.float32) / 127.5 - 1.0
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"images must be uint8 in [0, 255] or floating point in [-1, 1]; got dtype {dtype}")
  images = jnp.asarray(images)
  if isinstance(images, jax.core.Tracer) or not images.size:
    return images
  # Reduced where the array lives: only two scalars come back to the host. A concrete array
  # closed over by a jitted function is still checked, eagerly, while it is traced.
  with jax.ensure_compile_time_eval():
    low, high = float(jnp.min(images)), float(jnp.max(images))
  if not (np.isfinite(low) and np.isfinite(high)):
    raise ValueError("images contain NaN or infinite values")
  if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
    hint = ""
    if low >= 0 and high > 1:
      hint = (" (they look like [0, 255] or [0, 1] pixels: pass uint8, or map x to "
              "2 * x / 255 - 1)")
    raise ValueError(
        f"float images must lie in [-1, 1]; got values in [{low:g}, {high:g}]{hint}")
  return images


def check_tokens(indices, *, token_shape: Sequence[int], codebook_size: int,
                 extra_shape: Sequence[int] | None = None, allow_prefix: bool = False,
                 name: str = "indices") -> None:
  """Checks token ids for `decode`: integer dtype, ids in range, grid equal to token_shape.

  indices must be [B, *token_shape, *extra_shape]. `extra_shape` (the quantizer's per-token
  index dims, e.g. (L,) for residual) is checked when given, else left to the quantizer.
  `allow_prefix` (1D tokenizers only) accepts [B, n, ...] for any 1 <= n <= token_shape[0].
  The range is checked only on concrete arrays (see quantizers.base.check_indices): under
  jit, out-of-range ids read NaN or wrong codes unless the caller passes them through
  `quantizers.base.checked_indices` first, as `jaxtok.load` tokenizers do by default.
  """
  token_shape = tuple(int(s) for s in token_shape)
  shape = tuple(np.shape(indices))
  grid = shape[1:1 + len(token_shape)]
  expected = "[B, " + ", ".join(str(s) for s in token_shape)
  if extra_shape is not None:
    extra_shape = tuple(int(s) for s in extra_shape)
    expected += "".join(f", {s}" for s in extra_shape)
  expected += "]" if extra_shape is not None else ", ...]"
  if allow_prefix:
    if len(token_shape) != 1:
      raise ValueError("allow_prefix applies to 1D token sequences only")
    grid_ok = len(grid) == 1 and 1 <= grid[0] <= token_shape[0]
    expected += f" or a prefix [B, n, ...] with 1 <= n <= {token_shape[0]}"
  else:
    grid_ok = grid == token_shape
  rank_ok = len(shape) >= 1 + len(token_shape)
  extra_ok = extra_shape is None or shape[1 + len(token_shape):] == extra_shape
  if not (rank_ok and grid_ok and extra_ok):
    raise ValueError(
        f"{name} must have shape {expected} (the token grid of this tokenizer); got {shape}")
  check_indices(indices, codebook_size, name=name)
