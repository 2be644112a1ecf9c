"""Reconstruct images through a tokenizer: pictures side by side and PSNR / SSIM per image."""

import json
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from jaxtok.data import images as image_lib
from jaxtok.data import sources, transforms
from jaxtok.eval import metrics


def image_paths(path: str) -> tuple[str, list[str]]:
  """(folder, relative keys) of one image file or every image under a folder."""
  if os.path.isfile(path):
    return os.path.dirname(path) or ".", [os.path.basename(path)]
  if os.path.isdir(path):
    keys = sources.list_images(path)
    if keys:
      return path, keys
    raise ValueError(f"no images under {path!r} (searched {sources.IMAGE_EXTENSIONS})")
  raise FileNotFoundError(f"images must be an image file or a folder; {path!r} does not exist")


def reconstruct(roundtrip: Callable[[np.ndarray], np.ndarray], path: str, out: str, *,
                image_size: int, batch_size: int = 16) -> dict:
  """Center-crops each image of `path` to image_size, runs `roundtrip` (uint8 [B, S, S, 3] ->
  float [-1, 1] reconstructions) and writes out/<name>.png (original | reconstruction) and
  out/metrics.json (per image and mean PSNR, SSIM). Returns the metrics."""
  folder, keys = image_paths(path)
  os.makedirs(out, exist_ok=True)
  per_image = {}
  for start in range(0, len(keys), batch_size):
    batch_keys = keys[start:start + batch_size]
    originals = []
    for key in batch_keys:
      with open(os.path.join(folder, key), "rb") as f:
        originals.append(transforms.eval_transform(transforms.decode_image(f.read()), image_size))
    originals = np.stack(originals)
    recon = np.asarray(roundtrip(originals), np.float32)
    scaled = image_lib.to_float(originals)
    psnr, ssim = np.asarray(metrics.psnr(recon, scaled)), np.asarray(metrics.ssim(recon, scaled))
    recon_u8 = np.asarray(image_lib.to_uint8(recon))
    for i, key in enumerate(batch_keys):
      name = os.path.splitext(key.replace("/", "__"))[0] + ".png"
      Image.fromarray(np.concatenate([originals[i], recon_u8[i]], axis=1)).save(
          os.path.join(out, name))
      per_image[key] = {"psnr": float(psnr[i]), "ssim": float(ssim[i])}
  result = {"mean_psnr": float(np.mean([v["psnr"] for v in per_image.values()])),
            "mean_ssim": float(np.mean([v["ssim"] for v in per_image.values()])),
            "images": per_image}
  with open(os.path.join(out, "metrics.json"), "w") as f:
    json.dump(result, f, indent=2)
  return result
