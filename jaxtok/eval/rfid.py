"""A tokenizer evaluated on an image set: rFID with PSNR, SSIM, LPIPS and codebook usage.

One pass: each batch is reconstructed (one encode-quantize-decode call, jitted once at one
image size), and the originals and their reconstructions (quantized to 8 bits, as saved PNGs
would be) both go through the FID Inception; rFID is the FID between the two feature sets,
as tokenizer papers report it (reconstructions of the validation images against those images).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.data import images as image_lib
from jaxtok.eval import features as features_lib
from jaxtok.eval import fid, image_sets, metrics
from jaxtok.models import lpips as lpips_lib

_SSIM_MIN_SIDE = 11


def _step_fn(tok, lpips_params):
  """(uint8 images) -> (recon, per-image psnr/ssim/lpips, code counts), jitted."""
  codebook_size = tok.model.quantizer.codebook_size

  def step(images_u8, mask_B):
    out = tok.model.apply(tok.variables, images_u8)
    recon = jnp.clip(out.reconstruction, -1.0, 1.0)
    originals = image_lib.to_float(images_u8)
    per_image = {"psnr": metrics.psnr(recon, originals)}
    if min(images_u8.shape[1:3]) >= _SSIM_MIN_SIDE:
      per_image["ssim"] = metrics.ssim(recon, originals)
    if lpips_params is not None and min(images_u8.shape[1:3]) >= lpips_lib.MIN_SIZE:
      per_image["lpips"] = lpips_lib.LPIPS().apply(lpips_params, recon, originals)
    counts = None
    if codebook_size > 0:
      counts = metrics.code_counts(out.quantizer_output.indices, codebook_size, mask_B)
    return recon, per_image, counts

  return jax.jit(step)


def _usage(counts) -> dict:
  if counts is None:
    return {}
  usage = metrics.usage_from_counts(counts)
  perplexity = usage["perplexity"]
  return {"codebook_usage": usage["usage"], "codebook_perplexity": perplexity,
          "codebook_entropy_bits": float(np.log2(perplexity)) if perplexity > 0 else 0.0}


def evaluate_tokenizer(tok, images: str, *, resolution: int | None = None,
                       batch_size: int = 32, lpips: bool = True,
                       max_skipped: int | float = 0,
                       extractor: features_lib.InceptionFeatures | None = None,
                       progress: bool = True) -> dict:
  """rFID, PSNR, SSIM, LPIPS (means over images) and codebook usage, perplexity and entropy
  of the LoadedTokenizer `tok` on the image set `images` (see `image_sets`), taken at
  `resolution` (default: the tokenizer's training size). Returns the figures with the
  protocol."""
  resolution = tok.image_size if resolution is None else resolution
  image_set = image_sets.open_images(images, resolution=resolution, batch_size=batch_size,
                                     max_skipped=max_skipped)
  extractor = extractor or features_lib.InceptionFeatures(batch_size=batch_size)
  step = _step_fn(tok, lpips_lib.load_lpips_params() if lpips else None)
  per_image: dict[str, list] = {}
  counts = None

  def batches():
    nonlocal counts
    for images_u8 in image_set.batches:
      n = len(images_u8)
      padded = np.concatenate([images_u8, np.repeat(images_u8[-1:], batch_size - n, axis=0)])
      recon, values, batch_counts = step(padded, np.arange(batch_size) < n)
      for key, value in values.items():
        per_image.setdefault(key, []).append(np.asarray(value)[:n])
      if batch_counts is not None:
        counts = np.asarray(batch_counts) + (0 if counts is None else counts)
      # Originals and reconstructions side by side: one Inception call, one compile.
      yield np.concatenate([image_lib.to_float(images_u8), np.asarray(recon)[:n]])

  feats = extractor.extract(batches(), total=2 * image_set.total, desc="reconstruct + inception",
                            progress=progress)["pool"]
  n_total = len(feats) // 2
  originals, recons = _split_pairs(feats, per_image["psnr"])
  result = {"rfid": fid.fid_from_features(recons, originals),
            **{k: float(np.mean(np.concatenate(v))) for k, v in per_image.items()},
            **_usage(counts), "num_images": n_total}
  result["protocol"] = image_sets.protocol(
      image_set.description, n_total,
      "the same images (rFID: reconstructions vs their originals, one pass)")
  result["protocol"]["inception_weights"] = extractor.weights
  if image_set.skipped:
    result["protocol"]["skipped"] = dict(image_set.skipped)
  return result


def _split_pairs(feats: np.ndarray, psnr_batches: list) -> tuple[np.ndarray, np.ndarray]:
  """The features of originals and of reconstructions, from batches laid out [originals of
  batch i; reconstructions of batch i]."""
  originals, recons, start = [], [], 0
  for batch in psnr_batches:
    n = len(batch)
    originals.append(feats[start:start + n])
    recons.append(feats[start + n:start + 2 * n])
    start += 2 * n
  return np.concatenate(originals), np.concatenate(recons)
