"""Image decoding to uint8 RGB, and the resize / crop / flip transforms of the input pipeline.

Every image, whatever its file mode (palette, grey, CMYK, alpha, 16-bit), becomes uint8
[H, W, 3] RGB by one fixed rule (see `to_rgb`), upright as the EXIF orientation says; anything
else raises, and the pipeline counts the file as bad.
"""

import io

import numpy as np
from PIL import Image

# Transparent pixels are composited onto white, as a browser shows them on a white page.
BACKGROUND = (255, 255, 255)

_GREY16_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# PIL rawmodes of 16-bit colour PNGs -> the rawmode that decodes the same bytes with the low
# byte of each sample (big-endian data read as little-endian keeps the other byte), or, for
# LA, all four bytes of a pixel as they are.
_PNG16_LOW_RAWMODE = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L", "LA;16B": "RGBA"}
_EXIF_ORIENTATION = 0x0112


def _round_to_uint8(x: np.ndarray) -> np.ndarray:
  """x in [0, 1] -> uint8 by rounding; no exact .5 ties arise from 8- or 16-bit inputs."""
  return np.floor(x * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def _composite(rgb: np.ndarray, alpha: np.ndarray | None, max_value: float,
               background=BACKGROUND) -> np.ndarray:
  """Integer colour (and alpha) with full scale `max_value` -> uint8 RGB on `background`."""
  # float32 suffices: the nearest rounding boundary is >= 1/514 away from any exact result.
  c = rgb.astype(np.float32) / max_value
  if alpha is not None:
    a = alpha.astype(np.float32)[..., None] / max_value
    c = c * a + np.asarray(background, np.float32) / 255.0 * (1.0 - a)
  return _round_to_uint8(c)


def to_rgb(image: Image.Image, background=BACKGROUND) -> np.ndarray:
  """A decoded PIL image -> uint8 [H, W, 3] RGB, by one fixed rule per mode:

    RGB                      as stored.
    L, 1, CMYK, YCbCr, P     PIL's own fixed conversion (grey replicated, palette looked up,
                             CMYK -> R = round((255 - C) * (255 - K) / 255), ...).
    RGBA, LA, PA, and P, L,  composited onto the opaque `background` (white):
    RGB with a tRNS colour   out = round(c * a + background * (1 - a)), c, a in [0, 1].
    16-bit grey, RGB, RGBA   scaled as round(v * 255 / 65535), neither clipped to the low
    and LA PNG               byte nor truncated to the high one (`decode_image` reads both
                             bytes, which PIL alone does not); a 16-bit tRNS is ignored.
  """
  mode = image.mode
  if mode == "RGB" and "transparency" not in image.info:
    return np.asarray(image, np.uint8)
  if mode in _GREY16_MODES:
    grey = np.asarray(image).astype(np.int64)
    if mode == "I":  # 32-bit ints; from PNG this is 16-bit grey, so values outside are invalid
      grey = grey.clip(0, 65535)
    return _composite(np.repeat(grey[..., None], 3, axis=-1), None, 65535.0)
  if mode == "F":
    raise ValueError("float images (PIL mode 'F') are not supported")
  # An alpha band, or one colour marked transparent (a PNG tRNS chunk on P, L or RGB).
  if {"A", "a"} & set(image.getbands()) or "transparency" in image.info:
    rgba = np.asarray(image.convert("RGBA"), np.uint8)
    return _composite(rgba[..., :3], rgba[..., 3], 255.0, background)
  return np.asarray(image.convert("RGB"), np.uint8)


def _png16_low_bytes(data: bytes, rawmode: str) -> np.ndarray:
  """Decodes a 16-bit colour PNG again, keeping the bytes PIL's default decode drops."""
  image = Image.open(io.BytesIO(data))
  low = _PNG16_LOW_RAWMODE[rawmode]
  # The zip decoder unfilters by bytes per pixel, which both rawmodes share.
  image.tile = [t._replace(args=low) if hasattr(t, "_replace") else (*t[:3], low)
                for t in image.tile]
  image.load()
  return np.asarray(image, np.uint8)


def _png16_to_rgb(data: bytes, image: Image.Image, rawmode: str,
                  background=BACKGROUND) -> np.ndarray:
  """16-bit RGB / RGBA / LA PNG -> uint8 RGB with every sample scaled by rounding."""
  low = _png16_low_bytes(data, rawmode).astype(np.int64)
  if rawmode == "LA;16B":  # low holds (L_hi, L_lo, A_hi, A_lo) per pixel
    grey = low[..., 0] * 256 + low[..., 1]
    alpha = low[..., 2] * 256 + low[..., 3]
    return _composite(np.repeat(grey[..., None], 3, axis=-1), alpha, 65535.0, background)
  high = np.asarray(image, np.uint8).astype(np.int64)
  values = high * 256 + low
  alpha = values[..., 3] if rawmode == "RGBA;16B" else None
  return _composite(values[..., :3], alpha, 65535.0, background)


def _orientation(image: Image.Image) -> int:
  try:
    return int(image.getexif().get(_EXIF_ORIENTATION, 1))
  except Exception:  # pylint: disable=broad-except  # bad EXIF must not discard good pixels
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
  """Applies an EXIF orientation (1..8) to [H, W, C], as PIL's `ImageOps.exif_transpose`."""
  ops = {
      2: lambda a: a[:, ::-1],
      3: lambda a: a[::-1, ::-1],
      4: lambda a: a[::-1],
      5: lambda a: a.swapaxes(0, 1),
      6: lambda a: np.rot90(a, -1),
      7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
      8: lambda a: np.rot90(a, 1),
  }
  return np.ascontiguousarray(ops[orientation](image)) if orientation in ops else image


def decode_image(data: bytes, background=BACKGROUND) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, WebP, ...) -> uint8 [H, W, 3] RGB, fully decoded.

  Raises whatever PIL raises for corrupt, truncated, empty or non-image data.
  """
  if not data:
    raise ValueError("empty file (0 bytes)")
  try:
    image = Image.open(io.BytesIO(data))
  except Image.UnidentifiedImageError:  # PIL's message names a BytesIO address, not the data
    raise ValueError(f"not an image file PIL can read (starts with {data[:8]!r})") from None
  rawmode = image.tile[0][3] if image.format == "PNG" and len(image.tile) == 1 else None
  image.load()  # decodes everything now, so truncation raises here
  if isinstance(rawmode, str) and rawmode in _PNG16_LOW_RAWMODE:
    rgb = _png16_to_rgb(data, image, rawmode, background)
  else:
    rgb = to_rgb(image, background)
  return apply_orientation(rgb, _orientation(image))


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
  """Bicubic (antialiased) resize of uint8 [H, W, 3] so that min(H, W) == size."""
  h, w = image.shape[:2]
  if min(h, w) == size:
    return image
  if h <= w:
    new_h, new_w = size, max(size, round(w * size / h))
  else:
    new_h, new_w = max(size, round(h * size / w)), size
  pil = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
  return np.asarray(pil, np.uint8)


def _check_crop(image: np.ndarray, size: int) -> None:
  if image.shape[0] < size or image.shape[1] < size:
    raise ValueError(f"image must be at least {size}x{size} to crop; got {image.shape}")


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central size x size window ([H, W, C] -> [size, size, C]); odd margins go below/right."""
  _check_crop(image, size)
  top = (image.shape[0] - size) // 2
  left = (image.shape[1] - size) // 2
  return image[top:top + size, left:left + size]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """A uniformly placed size x size window of [H, W, C]."""
  _check_crop(image, size)
  top = int(rng.integers(0, image.shape[0] - size + 1))
  left = int(rng.integers(0, image.shape[1] - size + 1))
  return image[top:top + size, left:left + size]


def random_flip(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Left-right mirror of [H, W, C] with probability 1/2."""
  return image[:, ::-1] if rng.random() < 0.5 else image


def train_transform(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Shorter side to `size`, random size x size crop, random flip -> contiguous uint8."""
  image = random_crop(resize_shorter_side(image, size), size, rng)
  return np.ascontiguousarray(random_flip(image, rng))


def eval_transform(image: np.ndarray, size: int) -> np.ndarray:
  """Shorter side to `size`, central size x size crop -> contiguous uint8."""
  return np.ascontiguousarray(center_crop(resize_shorter_side(image, size), size))


def parse_resolution(value: str | int) -> str | int:
  """A `--resolution` value: "native" (each image's own size), "train" (the tokenizer's
  training crop size) or a side N >= 1 (shorter side resized to N, central N x N crop)."""
  if value in ("native", "train"):
    return value
  try:
    side = int(value)
  except (TypeError, ValueError):
    side = 0
  if isinstance(value, bool) or side < 1 or str(side) != str(value).strip():
    raise ValueError(f"resolution must be 'native', 'train' or a side N >= 1 such as 256; "
                     f"got {value!r}")
  return side


def crop_to_multiple(image: np.ndarray, factor: int) -> np.ndarray:
  """The central window of [H, W, C] whose H and W are rounded down to multiples of `factor`
  (odd margins go below/right, as in `center_crop`)."""
  h, w = image.shape[:2]
  new_h, new_w = h - h % factor, w - w % factor
  if not new_h or not new_w:
    raise ValueError(f"image {h}x{w} is smaller than the tokenizer's downsampling factor "
                     f"{factor}")
  top, left = (h - new_h) // 2, (w - new_w) // 2
  return np.ascontiguousarray(image[top:top + new_h, left:left + new_w])


def at_resolution(image: np.ndarray, resolution: str | int, *, factor: int,
                  train_size: int) -> np.ndarray:
  """uint8 [H, W, 3] at a `parse_resolution` value: "native" crops H and W to multiples of
  `factor`; "train" and N are `eval_transform` at train_size and N."""
  if resolution == "native":
    return crop_to_multiple(image, factor)
  return eval_transform(image, train_size if resolution == "train" else resolution)


def describe_resolution(resolution: str | int, *, factor: int, train_size: int) -> str:
  """One line for the commands' output, e.g. "native (each image's own size, H and W
  center-cropped to multiples of 8)"."""
  if resolution == "native":
    return (f"native (each image's own size, H and W center-cropped to multiples of "
            f"{factor})")
  side = train_size if resolution == "train" else resolution
  what = "train: the training crop, " if resolution == "train" else ""
  return f"{side}x{side} ({what}shorter side resized to {side}, then a central crop)"
