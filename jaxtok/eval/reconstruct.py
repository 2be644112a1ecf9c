"""Reconstruct images through a tokenizer: pictures side by side and PSNR / SSIM per image."""

import functools
import json
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from jaxtok.data import images as image_lib
from jaxtok.data import pipeline, sources, transforms
from jaxtok.eval import metrics

METRICS = "metrics.json"
_SSIM_MIN_SIDE = 11  # the SSIM window


def image_paths(path: str, *, exclude: str | None = None) -> tuple[str, list[str]]:
  """(folder, relative keys) of one image file or every image under a folder; files under
  `exclude` (an output folder inside the input folder) are left out."""
  if os.path.isfile(path):
    return os.path.dirname(path) or ".", [os.path.basename(path)]
  if not os.path.isdir(path):
    raise FileNotFoundError(f"images must be an image file or a folder; {path!r} does not "
                            f"exist")
  keys = sources.list_images(path)
  if exclude is not None:
    inside = os.path.relpath(os.path.abspath(exclude), os.path.abspath(path))
    if inside == ".":
      raise ValueError(f"out must differ from the images folder; got {exclude!r} for both")
    if not inside.startswith(".."):  # earlier outputs would be read back as inputs
      keys = [k for k in keys if not k.startswith(inside.replace(os.sep, "/") + "/")]
  if not keys:
    raise ValueError(sources.no_images_message(path))
  return path, keys


def output_name(key: str) -> str:
  """The picture written for input `key`: its whole relative path, extension included, plus
  ".png" (a.jpg -> a.jpg.png, sub/a.png -> sub/a.png.png), so that no two inputs share one."""
  return key + ".png"


def resolve_resolution(requested: str | int | None, model, train_size: int) -> str | int:
  """The resolution to run `model` at, checked against the image sizes it accepts.

  requested: a `transforms.parse_resolution` value, or None for "native" when the model takes
  images of any size (a multiple of its downsampling factor) and "train" when it takes only
  its training size (learned position embeddings).
  """
  factor = model.downsample_factor
  probe = (train_size + factor, train_size + 2 * factor)  # not square, not the training size
  if requested is None or requested == "native":
    try:
      model.token_shape(probe)
    except ValueError as e:
      if requested is None:
        return "train"
      raise ValueError(f"resolution 'native': this {type(model).__name__} takes only some "
                       f"image sizes ({e}); use 'train' or a fixed side N") from None
    return "native"
  if requested != "train":
    try:
      model.token_shape((requested, requested))
    except ValueError as e:
      raise ValueError(f"resolution {requested} does not suit this {type(model).__name__}: "
                       f"{e}") from None
  return requested


def _write_pictures(out: str, keys, originals, recon, per_image: dict) -> None:
  """out/<output_name(key)> (original | reconstruction) and the metrics of one batch."""
  scaled = image_lib.to_float(originals)
  psnr = np.asarray(metrics.psnr(recon, scaled))
  ssim = [None] * len(keys)
  if min(originals.shape[1:3]) >= _SSIM_MIN_SIDE:
    ssim = [float(v) for v in np.asarray(metrics.ssim(recon, scaled))]
  recon_u8 = np.asarray(image_lib.to_uint8(recon))
  for i, key in enumerate(keys):
    path = os.path.join(out, output_name(key))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.concatenate([originals[i], recon_u8[i]], axis=1)).save(path)
    per_image[key] = {"psnr": float(psnr[i]), "ssim": ssim[i],
                      "size": list(originals.shape[1:3]), "output": output_name(key)}


def _summary(per_image: dict, skipped: dict, ignored: dict, resolution,
             error: str | None) -> dict:
  ssims = [v["ssim"] for v in per_image.values() if v["ssim"] is not None]
  result = {"resolution": resolution, "num_images": len(per_image),
            "mean_psnr": float(np.mean([v["psnr"] for v in per_image.values()]))
                         if per_image else None,
            "mean_ssim": float(np.mean(ssims)) if ssims else None,
            "images": per_image, "skipped": skipped, "ignored": ignored}
  if error is not None:
    result["error"] = error
  return result


def reconstruct(roundtrip: Callable[[np.ndarray], np.ndarray], path: str, out: str, *,
                image_size: int, factor: int, resolution: str | int = "native",
                batch_size: int = 16, max_skipped: int | float = 0.5,
                progress: bool = False) -> dict:
  """Reconstructs the image file or every image under the folder `path` into `out`.

  `roundtrip` maps uint8 [B, H, W, 3] to float [-1, 1] reconstructions. Images are taken at
  `resolution` (`transforms.at_resolution`: "native" crops each image's H and W to multiples
  of `factor`, "train" and N resize and center-crop to image_size and N); at "native" they run
  one at a time, since sizes differ. Writes out/<output_name(key)> (original | reconstruction)
  per image and out/metrics.json: PSNR and SSIM (None below 11 pixels) per image and their
  means, measured at that resolution, the skipped files with their reasons and the count of
  files left out for their extension (`sources.other_files`). Bad files are
  skipped within `max_skipped` (see `pipeline.resolve_budget`); past it, BadDataError, after
  metrics.json is written for the images done. Returns the metrics.
  """
  resolution = transforms.parse_resolution(resolution)
  folder, keys = image_paths(path, exclude=out)
  pipeline.output_dir(out)
  prepare = functools.partial(transforms.at_resolution, resolution=resolution, factor=factor,
                              train_size=image_size)
  skipped, per_image, error = {}, {}, None
  images = pipeline.read_files(folder, keys, prepare, max_skipped=max_skipped, skipped=skipped)
  size = 1 if resolution == "native" else batch_size  # native sizes differ: one at a time
  batches = pipeline.batch_by_shape(images, size, flush_on_error=True)
  try:
    for batch_keys, originals, recon in pipeline.run_batches(
        roundtrip, batches, total=len(keys), skipped=skipped, desc="reconstruct",
        progress=progress, pad_to=min(size, len(keys))):
      _write_pictures(out, batch_keys, originals, np.asarray(recon, np.float32), per_image)
  except BaseException as e:  # what was done is still reported
    error = f"{type(e).__name__}: {e}"
    raise
  finally:
    ignored = sources.other_files(folder, exclude=out) if os.path.isdir(path) else {}
    result = _summary(per_image, skipped, ignored, resolution, error)
    with open(os.path.join(out, METRICS), "w") as f:
      json.dump(result, f, indent=2)
  return result
