"""Images to non-overlapping patches and back (the ViT patch embedding's reshape).

Shape letters: B batch, H W image height and width, C channels, p patch side, h w = H/p W/p
the patch grid, P = p*p*C values per patch, flattened in (p, p, C) order.

Patches keep the grid ([B, h, w, P], itself an NHWC array): convolutional and per-patch models
use it as is, transformers flatten it to [B, h*w, P] with a reshape.
"""

import jax


def patchify(images_BHWC: jax.Array, patch_size: int) -> jax.Array:
  """[B, H, W, C] -> [B, h, w, p*p*C]; patch (i, j) is images[:, i*p:(i+1)*p, j*p:(j+1)*p]."""
  if images_BHWC.ndim != 4:
    raise ValueError(f"images must be NHWC [B, H, W, C]; got shape {tuple(images_BHWC.shape)}")
  if patch_size < 1:
    raise ValueError(f"patch_size must be >= 1; got {patch_size}")
  b, height, width, c = images_BHWC.shape
  p = patch_size
  if height % p or width % p:
    raise ValueError(f"images H={height} and W={width} must both be divisible by the patch "
                     f"size {p}; got shape {tuple(images_BHWC.shape)}")
  h, w = height // p, width // p
  x = images_BHWC.reshape(b, h, p, w, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h, w, p * p * c)


def unpatchify(patches_BhwP: jax.Array, patch_size: int) -> jax.Array:
  """Inverse of `patchify`: [B, h, w, p*p*C] -> [B, h*p, w*p, C]."""
  if patches_BhwP.ndim != 4:
    raise ValueError(f"patches must be [B, h, w, p*p*C]; got shape {tuple(patches_BhwP.shape)}")
  b, h, w, dim = patches_BhwP.shape
  p = patch_size
  if patch_size < 1 or dim % (p * p):
    raise ValueError(f"patches' last axis ({dim}) must be p*p*C for patch size {p}; got shape "
                     f"{tuple(patches_BhwP.shape)}")
  x = patches_BhwP.reshape(b, h, w, p, p, dim // (p * p)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * p, w * p, dim // (p * p))
