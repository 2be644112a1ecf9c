"""Image sets for FID: folders, ArrayRecord shards and `.npz` image batches, read in batches,
and their Inception features, statistics and the protocol line that goes with them.

An image set is one of
  - a folder (or one image file): every image under it, sorted by path;
  - an `.npz` whose `arr_0` is uint8 [N, H, W, 3] (the ADM evaluator's sample batches);
  - ArrayRecord shards (a file or a glob) written by tools/make_arrayrecord.py.
At `resolution` None images go to the Inception as they are (folders and `.npz` only; batches
group consecutive images of one size); at N each image's shorter side is resized to N
(bicubic, antialiased) and the central N x N crop taken, as the ADM reference batches were
made. The Inception then resizes to 299 (the protocol's own step).
"""

import concurrent.futures
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from jaxtok.data import pipeline, sources, transforms
from jaxtok.eval import fid
from jaxtok.models import inception

INCEPTION = ("FID InceptionV3 (TensorFlow graph 2015-12-05, the weights of pytorch-fid / "
             "clean-fid / the ADM evaluator; the file read: see inception_weights)")


@dataclasses.dataclass
class ImageSet:
  """Batches of uint8 [b, H, W, 3] images (iterate once) and what they are."""

  batches: Iterable[np.ndarray]
  total: int  # images (files) in the set, bad ones included
  description: str  # for the protocol line
  skipped: dict[str, str] = dataclasses.field(default_factory=dict)


def _resolution_text(resolution: int | None) -> str:
  if resolution is None:
    return "as stored"
  return f"shorter side resized to {resolution} (bicubic), central {resolution}x{resolution} crop"


def _npz_images(path: str) -> np.ndarray:
  with np.load(path, allow_pickle=False) as data:
    if "arr_0" not in data.files or data["arr_0"].ndim != 4:
      raise ValueError(f"images {path!r}: an .npz image set holds uint8 'arr_0' [N, H, W, 3]; "
                       f"it holds {sorted(data.files)} (a stats file goes to --ref)")
    images = data["arr_0"]
  if images.dtype != np.uint8 or images.shape[-1] != 3:
    raise ValueError(f"images {path!r}: arr_0 must be uint8 [N, H, W, 3]; got {images.dtype} "
                     f"{images.shape}")
  return images


def _load(folder: str, prepare: Callable, key: str) -> tuple[str, np.ndarray | None, str | None]:
  try:
    with open(os.path.join(folder, key), "rb") as f:
      return key, prepare(transforms.decode_image(f.read())), None
  except Exception as e:  # pylint: disable=broad-except  # any failure = a bad file
    return key, None, f"{type(e).__name__}: {e}"


def read_files(folder: str, keys: Sequence[str], prepare: Callable, *,
               max_skipped: int | float, skipped: dict[str, str], threads: int = 16,
               chunk: int = 256) -> Iterator[tuple[str, np.ndarray]]:
  """(key, prepare(decoded uint8 image)) in order, as `pipeline.read_files` (bad files go to
  `skipped` within the `max_skipped` budget, then BadDataError), but decoded by `threads`
  threads, one chunk of files ahead of the consumer, so decoding overlaps the Inception."""
  budget = pipeline.resolve_budget(max_skipped, len(keys))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    submit = lambda start: [pool.submit(_load, folder, prepare, k)
                            for k in keys[start:start + chunk]]
    pending, start = submit(0), chunk
    while pending:
      ahead, start = submit(start), start + chunk
      for future in pending:
        key, image, error = future.result()
        if error is None:
          yield key, image
          continue
        skipped[key] = error
        if len(skipped) > budget or len(skipped) == len(keys):
          raise pipeline.BadDataError(pipeline.budget_message(
              skipped, total=len(keys), name=repr(folder), max_skipped=max_skipped,
              budget=budget, unit="files"))
      pending = ahead


def _array_batches(images: np.ndarray, batch_size: int, prepare) -> Iterator[np.ndarray]:
  for start in range(0, len(images), batch_size):
    part = images[start:start + batch_size]
    yield part if prepare is None else np.stack([prepare(x) for x in part])


def open_images(path: str, *, resolution: int | None = None, batch_size: int = 200,
                max_skipped: int | float = 0) -> ImageSet:
  """The image set at `path` (see the module docstring) in batches of up to `batch_size`."""
  prepare = None if resolution is None else functools.partial(transforms.eval_transform,
                                                              size=resolution)
  what = _resolution_text(resolution)
  if not os.path.exists(path) and not any(c in path for c in "*?["):
    raise FileNotFoundError(f"images {path!r} does not exist; expected a folder, an image "
                            f"file, an .npz with arr_0 or ArrayRecord shards (a glob)")
  if path.endswith(".npz") and os.path.isfile(path):
    images = _npz_images(path)
    return ImageSet(_array_batches(images, batch_size, prepare), len(images),
                    f"{len(images)} images of {path} ({what})")
  if os.path.isdir(path) or (os.path.isfile(path) and not path.endswith(".array_record")):
    folder, keys = (path, sources.list_images(path)) if os.path.isdir(path) else (
        os.path.dirname(path) or ".", [os.path.basename(path)])
    if not keys:
      raise ValueError(sources.no_images_message(path))
    skipped: dict[str, str] = {}
    files = read_files(folder, keys, prepare or (lambda x: x), max_skipped=max_skipped,
                       skipped=skipped)
    batches = (b for _, b in pipeline.batch_by_shape(files, batch_size))
    return ImageSet(batches, len(keys), f"{len(keys)} files under {path} ({what})", skipped)
  source = sources.ArrayRecordSource(path)
  if resolution is None:
    raise ValueError(f"images {path!r} are ArrayRecord shards, whose images may differ in size: "
                     f"pass a resolution N (--resolution 256)")
  log = pipeline.SkipLog()
  ds = pipeline.make_pipeline(source, image_size=resolution, batch_size=batch_size, seed=0,
                              train=False, shard_index=0, shard_count=1,
                              max_skipped=max_skipped, skip_log=log)
  return ImageSet((b["image"] for b in ds), len(source),
                  f"{len(source)} records of {path} ({what})", log.skipped)


def protocol(images: str, num_images: int, reference: str | None = None) -> dict:
  """The measurement's protocol, printed and saved beside each result."""
  out = {"inception": INCEPTION,
         "resize": f"images -> {inception.INPUT_SIZE}x{inception.INPUT_SIZE} by TensorFlow's "
                   f"legacy bilinear resize (float, unrounded), then (x - 128) / 128",
         "features": "pool_3, 2048-d (sFID: mixed_6/conv, first 7 channels, 17x17x7, as the "
                     "ADM evaluator); statistics in float64, covariance with N - 1",
         "images": images, "num_images": int(num_images)}
  if reference is not None:
    out["reference"] = reference
  return out


def describe(result: dict) -> str:
  """The figures of `result` and its protocol, a few lines for the terminal."""
  figures = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in result.items() if k != "protocol" and v is not None)
  lines = [figures, "protocol:"]
  lines += [f"  {k}: {v}" for k, v in result.get("protocol", {}).items()]
  return "\n".join(lines)


def reference_stats(ref: str, features_of: Callable[[ImageSet], dict], *,
                    resolution: int | None, batch_size: int) -> dict:
  """{"mu", "sigma", "description"} of a statistics file `ref`, plus "features" of the ADM
  reference batch's arr_0 images when present (precision and recall); {"features",
  "spatial", "description"} of an image set."""
  if ref.endswith(".npz") and os.path.isfile(ref):
    with np.load(ref, allow_pickle=False) as data:
      is_stats = all(k in data.files for k in fid.STATS_KEYS)
    if is_stats:
      stats = fid.load_stats(ref)
      saved = stats.get("protocol", {})
      count = saved.get("num_images")
      out = {k: stats[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in stats}
      out["description"] = f"statistics file {ref}" + (f" ({count} images)" if count else "")
      if "images" in stats:
        images = stats["images"]
        feats = features_of(ImageSet(_array_batches(images, batch_size, None), len(images),
                                     f"arr_0 of {ref}"))
        out["features"] = feats["pool"]
        out["description"] += f"; precision/recall against its {len(images)} arr_0 images"
      return out
  image_set = open_images(ref, resolution=resolution, batch_size=batch_size)
  feats = features_of(image_set)
  out = {"features": feats["pool"], "description": image_set.description}
  if "spatial" in feats:
    out["spatial"] = feats["spatial"]
  return out
