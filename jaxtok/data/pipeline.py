"""The Grain input pipeline: a source of records -> batches {"image": uint8 [B, S, S, 3]}.

  source -> seed -> (train: shuffle, repeat) -> decode + transform -> shard -> threads
         -> mp_prefetch (num_workers processes) -> skip bad records (main process) -> batch

Bad files are found lazily, in the map, which returns a marker instead of raising; a filter in
the main process, after the workers, drops it, logs the path once and counts it. There, and
not in a pre-validation pass or a worker-side filter, because every record keeps its index
(shuffling, sharding and resume are unchanged), batches are identical for any `num_workers`,
and one process counts the budget exactly. `max_skipped`: an int of distinct bad records or a
fraction in [0, 1) of the source; past it, or when every record is bad, the iterator raises
`BadDataError`. `it.get_state()` / `it.set_state()` resume the stream bit for bit.

The offline commands (`jaxtok reconstruct`, `jaxtok tokenize`) read without Grain, in one
ordered pass (`read_files`, `batch_by_shape`, `run_batches`), under the same budget and error.
"""

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
import tqdm

from jaxtok.data import transforms

log = logging.getLogger(__name__)


class BadDataError(ValueError):
  """More distinct records could not be read or decoded than the error budget allows.

  A ValueError: the data, a user's input, is wrong, and the CLI reports it in one line.
  """


class SkipLog:
  """The distinct records a pipeline skipped: `skipped[key] = reason`, in order of discovery."""

  def __init__(self):
    self.skipped: dict[str, str] = {}

  def __len__(self) -> int:
    return len(self.skipped)


def resolve_budget(max_skipped: int | float, total: int) -> int:
  """How many distinct bad records out of `total` are tolerated (see the module docstring)."""
  if isinstance(max_skipped, bool) or not isinstance(max_skipped, (int, float)):
    raise TypeError(f"max_skipped must be an int (a count) or a float (a fraction); "
                    f"got {max_skipped!r}")
  if isinstance(max_skipped, float):
    if not 0.0 <= max_skipped < 1.0:
      raise ValueError(f"max_skipped as a fraction must be in [0, 1); got {max_skipped}")
    return int(max_skipped * total)
  if max_skipped < 0:
    raise ValueError(f"max_skipped as a count must be >= 0; got {max_skipped}")
  return max_skipped


def budget_message(skipped: dict[str, str], *, total: int, name: str,
                   max_skipped: int | float, budget: int, unit: str = "records") -> str:
  """The BadDataError message: the count against the budget, then the first skipped keys."""
  count = len(skipped)
  listed = "; ".join(f"{k}: {r}" for k, r in list(skipped.items())[:5])
  more = " ..." if count > 5 else ""
  if count >= total:
    head = f"none of the {total} {unit} of {name} could be read as an image"
  else:
    head = (f"{count} distinct {unit} of {name} ({total} {unit}) could not be read as "
            f"images, more than max_skipped={max_skipped!r} allows ({budget}); fix or remove "
            f"them, or raise max_skipped")
  return f"{head}. Skipped: {listed}{more}"


def _load_image(record: dict) -> np.ndarray | dict:
  """A source record -> uint8 [H, W, 3], or a skip marker when it cannot be read or decoded."""
  if "error" in record:
    return {"skipped": record["key"], "reason": record["error"]}
  if "image" in record:
    image = record["image"]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"record {record['key']!r}: 'image' must be uint8 [H, W, 3]; "
                       f"got {image.dtype} {image.shape}")
    return image
  try:
    return transforms.decode_image(record["bytes"])
  except Exception as e:  # pylint: disable=broad-except  # any decoder failure = a bad file
    return {"skipped": record["key"], "reason": f"{type(e).__name__}: {e}"}


def train_example(record: dict, rng: np.random.Generator, *, image_size: int) -> dict:
  """Decode, shorter side to image_size, random crop, random flip -> {"image"} or a marker."""
  image = _load_image(record)
  if isinstance(image, dict):
    return image
  return {"image": transforms.train_transform(image, image_size, rng)}


def eval_example(record: dict, *, image_size: int) -> dict:
  """Decode, shorter side to image_size, center crop -> {"image"} or a marker."""
  image = _load_image(record)
  if isinstance(image, dict):
    return image
  return {"image": transforms.eval_transform(image, image_size)}


class _SkipBadRecords:
  """IterDataset filter run in the main process: drops, logs and budgets skip markers."""

  def __init__(self, skip_log: SkipLog, *, max_skipped: int | float, total: int, name: str):
    self.skip_log = skip_log
    self.max_skipped = max_skipped
    self.budget = resolve_budget(max_skipped, total)
    self.total = total
    self.name = name

  def __call__(self, element: dict) -> bool:
    if "skipped" not in element:
      return True
    key, reason = element["skipped"], element["reason"]
    if key not in self.skip_log.skipped:
      self.skip_log.skipped[key] = reason
      count = len(self.skip_log)
      log.warning("skipped bad image %s: %s (%d distinct skipped; budget %d)", key, reason,
                  count, self.budget)
      if count > self.budget or count >= self.total:
        raise BadDataError(self._message(count))
    return False

  def _message(self, count: int) -> str:
    return budget_message(self.skip_log.skipped, total=self.total, name=self.name,
                          max_skipped=self.max_skipped, budget=self.budget)


def _mark_absl_flags_parsed() -> None:
  # Grain worker processes crash under JAX when absl flags were never parsed (outside app.run).
  from absl import flags  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def make_pipeline(source: Any, *, image_size: int, batch_size: int, seed: int, train: bool,
                  num_workers: int = 0, shard_index: int | None = None,
                  shard_count: int | None = None, max_skipped: int | float = 0.01,
                  skip_log: SkipLog | None = None, read_threads: int = 16,
                  drop_remainder: bool = False) -> grain.IterDataset:
  """Batches {"image": uint8 [batch_size, image_size, image_size, 3]} from a record source.

  Args:
    source: a random-access source of records (`sources.FolderSource`,
      `sources.ArrayRecordSource`, `samples.SampleCrops`, or any `len` + `[i]` object
      returning records as documented in `jaxtok.data.sources`).
    image_size: output side S: the shorter side is resized to S, then an S x S crop is taken.
    batch_size: images per batch on this process.
    seed: seeds the shuffle and the per-image crop/flip (the same seed gives the same stream).
    train: True: shuffled anew each epoch, repeated forever, random crop and flip. False: one
      pass in source order, center crop, no flip (evaluation).
    num_workers: worker processes decoding images (0: decode in this process, in threads).
      Batches are identical for every value.
    shard_index, shard_count: this process's shard of the data; default
      `jax.process_index()`, `jax.process_count()`. Shards are disjoint within an epoch.
    max_skipped: error budget for bad records (see the module docstring): an int count, or a
      float fraction of `len(source)`.
    skip_log: receives the skipped keys and reasons; pass one to read them (a fresh one is
      made otherwise).
    read_threads: decoding threads per process (PIL releases the GIL while decoding).
    drop_remainder: drop a final partial batch (only a `train=False` pass can end with one).

  Returns:
    A `grain.IterDataset`; `iter(ds)` supports `get_state()` / `set_state()` for exact resume.
  """
  for name, value, low in (("image_size", image_size, 1), ("batch_size", batch_size, 1),
                           ("num_workers", num_workers, 0), ("read_threads", read_threads, 1)):
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
  if (shard_index is None) != (shard_count is None):
    raise ValueError(f"give both shard_index and shard_count or neither; got "
                     f"shard_index={shard_index}, shard_count={shard_count}")
  if shard_index is None:
    import jax  # pylint: disable=g-import-not-at-top  # only when sharding by JAX process

    shard_index, shard_count = jax.process_index(), jax.process_count()
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, shard_count={shard_count}); got {shard_index}")
  total = len(source)
  if total == 0:
    raise ValueError(f"source must hold at least one record; {source!r} is empty")
  skip_filter = _SkipBadRecords(skip_log if skip_log is not None else SkipLog(),
                                max_skipped=max_skipped, total=total, name=repr(source))

  ds = grain.MapDataset.source(source).seed(seed)
  if train:
    # random_map before the shard slice: each image's crop/flip is seeded by its global
    # position in the stream, so shards never share random draws.
    ds = ds.shuffle().repeat().random_map(functools.partial(train_example,
                                                            image_size=image_size))
  else:
    ds = ds.map(functools.partial(eval_example, image_size=image_size))
  ds = ds[shard_index::shard_count]
  it = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=read_threads, prefetch_buffer_size=max(2 * batch_size, 2 * read_threads)))
  if num_workers > 0:
    _mark_absl_flags_parsed()
    # Workers return single images, batched below in the main process, so that the batches do
    # not depend on num_workers.
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                     per_worker_buffer_size=batch_size))
  it = it.filter(skip_filter)
  return it.batch(batch_size, drop_remainder=drop_remainder)



def output_dir(out: str) -> str:
  """Creates the folder `out` (with its parents) if needed; a ValueError names it when it is a
  file or cannot be created."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"out must be a folder; {out!r} is an existing file")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create the output folder {out!r}: {e.strerror or e}") from None
  return out


def read_files(folder: str, keys: Sequence[str], prepare: Callable[[np.ndarray], np.ndarray],
               *, max_skipped: int | float,
               skipped: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
  """(key, prepare(decoded uint8 [H, W, 3])) of each file of `keys` (relative to `folder`).

  One pass, in order. A file that cannot be read, decoded or prepared goes to `skipped[key]`
  with its reason; past the `max_skipped` budget (see `resolve_budget`) or when every file is
  bad, the iterator raises BadDataError.
  """
  budget = resolve_budget(max_skipped, len(keys))

  def read():
    for key in keys:
      try:
        with open(os.path.join(folder, key), "rb") as f:
          image = prepare(transforms.decode_image(f.read()))
      except Exception as e:  # pylint: disable=broad-except  # any failure = a bad file
        skipped[key] = f"{type(e).__name__}: {e}"
        log.info("skipped bad image %s: %s", key, skipped[key])
        if len(skipped) > budget or len(skipped) == len(keys):
          raise BadDataError(budget_message(skipped, total=len(keys), name=repr(folder),
                                            max_skipped=max_skipped, budget=budget,
                                            unit="files")) from None
        continue
      yield key, image

  return read()


def batch_by_shape(items: Iterable[tuple[str, np.ndarray]], batch_size: int, *,
                   flush_on_error: bool = False) -> Iterator[tuple[list[str], np.ndarray]]:
  """(keys, uint8 [b, H, W, 3]): up to batch_size consecutive items of one image shape.

  flush_on_error: when `items` raises, the images read before still come out, then the error.
  """
  keys, images = [], []
  try:
    for key, image in items:
      if images and image.shape != images[0].shape:
        yield keys, np.stack(images)
        keys, images = [], []
      keys.append(key)
      images.append(image)
      if len(images) == batch_size:
        yield keys, np.stack(images)
        keys, images = [], []
  except Exception:
    if images and flush_on_error:
      yield keys, np.stack(images)
    raise
  if images:
    yield keys, np.stack(images)


def _call(fn: Callable[[np.ndarray], Any], images: np.ndarray) -> Any:
  """fn(images); running out of device memory becomes a ValueError that says what to lower."""
  try:
    return fn(images)
  except Exception as e:  # pylint: disable=broad-except  # XlaRuntimeError has no OOM subclass
    if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
      raise
    first = str(e).strip().splitlines()[0][:200]
    raise ValueError(f"a batch of {images.shape[0]} images of {images.shape[1]}x"
                     f"{images.shape[2]} ran out of device memory ({first}); lower the "
                     f"resolution (--resolution N) or --batch-size") from e


def run_batches(fn: Callable[[np.ndarray], Any],
                batches: Iterable[tuple[list[str], np.ndarray]], *, total: int,
                skipped: dict[str, str], desc: str, progress: bool = False,
                pad_to: int | None = None) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
  """(keys, images, np.asarray(fn(images))) for each batch.

  pad_to: a smaller batch is padded with copies of its last image to this size (and its
  outputs cut back), so that a run at one image size compiles `fn` once.
  progress: prints "compiling" before the first call, which compiles `fn`, and only then
  starts a tqdm bar (stderr) over the `total` files, skipped ones included, so that its rate
  and ETA measure the steady state.
  """
  bar, done = None, 0
  try:
    for keys, images in batches:
      n = len(images)
      if progress and bar is None:
        print(f"{desc}: compiling for {images.shape[1]}x{images.shape[2]} images (the first "
              f"batch) ...", end=" ", flush=True)
        start = time.perf_counter()
      padded = images
      if pad_to is not None and n < pad_to:
        padded = np.concatenate([images, np.repeat(images[-1:], pad_to - n, axis=0)])
      outputs = np.asarray(_call(fn, padded))[:n]
      done += n
      if progress and bar is None:
        print(f"{time.perf_counter() - start:.1f} s", flush=True)
        bar = tqdm.tqdm(total=total, initial=done + len(skipped), desc=desc, unit="img",
                        file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
      elif bar is not None:
        bar.update(done + len(skipped) - bar.n)
        bar.set_postfix(skipped=len(skipped), refresh=False)
      yield keys, images, outputs
    if bar is not None:  # files skipped after the last batch
      bar.update(done + len(skipped) - bar.n)
  finally:
    if bar is not None:
      bar.close()


def describe_skipped(skipped: dict[str, str], ignored: dict[str, int] | None = None,
                     limit: int = 10) -> str:
  """"skipped N files:" with one indented "key: reason" line per file (the first `limit`),
  then, if any, the files left out for their extension (`sources.other_files`)."""
  lines = [f"skipped {len(skipped)} file{'' if len(skipped) == 1 else 's'}"
           + (":" if skipped else "")]
  lines += [f"  {key}: {reason}" for key, reason in list(skipped.items())[:limit]]
  if len(skipped) > limit:
    lines.append(f"  ... and {len(skipped) - limit} more")
  if ignored:
    listed = ", ".join(f"{ext} ({n})" for ext, n in ignored.items())
    count = sum(ignored.values())
    lines.append(f"ignored {count} file{'' if count == 1 else 's'} whose extension is not an "
                 f"image format read here: {listed}")
  return "\n".join(lines)
