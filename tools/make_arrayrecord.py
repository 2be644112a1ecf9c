"""Packs a folder of images into ArrayRecord shards for `jaxtok.data.sources.ArrayRecordSource`.

Usage:
  python tools/make_arrayrecord.py --folder /data/images --output /data/shards \
      --num_shards 64 [--eval_fraction 0.01 --num_eval_shards 4] [--max_skipped 0.01] \
      [--threads 16]

Writes <output>/train-00000-of-00064.array_record ... and, when --eval_fraction > 0, also
eval-00000-of-00004.array_record ...; a file goes to eval by a stable hash of its relative
path, exactly as `FolderSource(split="eval", eval_fraction=...)` would put it. Files are
sorted by relative path and cut into contiguous shards, so reading the shards in order gives
the folder's order.

Every file (.jpg, .jpeg, .png, .webp, recursively) is decoded once to check it. Corrupt,
truncated, empty and non-image files are skipped, counted and logged with their path; past the
--max_skipped budget (an integer count, or a fraction such as 0.01 of the files) nothing is
written and the command fails. Records hold the file bytes as stored (no re-encoding) and JSON
metadata {"key": relative path, "format", "width", "height"}. Then train with
  ArrayRecordSource("/data/shards/train-*.array_record").
"""

import argparse
import concurrent.futures
import io
import logging
import os
import sys

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from jaxtok.data import pipeline, sources, transforms

log = logging.getLogger("make_arrayrecord")
# group_size:1 gives Grain's random access one record per read; image files are already
# compressed, so another compression pass would only cost time.
WRITER_OPTIONS = "group_size:1,uncompressed"


def _check(folder: str, key: str) -> tuple[str, dict | None, str | None]:
  """(key, metadata, None) for a good image file, (key, None, reason) for a bad one."""
  try:
    with open(os.path.join(folder, key), "rb") as f:
      data = f.read()
    image = transforms.decode_image(data)
    fmt = Image.open(io.BytesIO(data)).format  # reads the header only
  except Exception as e:  # pylint: disable=broad-except  # any failure = a bad file
    return key, None, f"{type(e).__name__}: {e}"
  return key, {"key": key, "format": fmt, "height": image.shape[0],
               "width": image.shape[1]}, None


def _write_split(folder: str, output: str, split: str, items: list[tuple[str, dict]],
                 num_shards: int) -> list[str]:
  num_shards = min(num_shards, len(items))
  paths = []
  for shard, chunk in enumerate(np.array_split(np.arange(len(items)), num_shards)):
    path = os.path.join(output, f"{split}-{shard:05d}-of-{num_shards:05d}.array_record")
    tmp = path + ".tmp"  # renamed when complete: a crash never leaves a short shard behind
    writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
    for i in chunk:
      key, meta = items[i]
      with open(os.path.join(folder, key), "rb") as f:
        writer.write(sources.encode_record(f.read(), meta))
    writer.close()
    os.replace(tmp, path)
    paths.append(path)
  return paths


def build_shards(folder: str, output: str, *, num_shards: int, eval_fraction: float = 0.0,
                 num_eval_shards: int = 1, max_skipped: int | float = 0.01,
                 threads: int = 8) -> dict:
  """Checks every image under `folder` and writes the good ones as ArrayRecord shards.

  Returns {"train": [shard paths], "eval": [shard paths], "skipped": {relative path: reason}}.
  Raises ValueError for an empty folder, `pipeline.BadDataError` past the budget.
  """
  for name, value in (("num_shards", num_shards), ("num_eval_shards", num_eval_shards),
                      ("threads", threads)):
    if value < 1:
      raise ValueError(f"{name} must be >= 1; got {value}")
  folder_source = sources.FolderSource(folder)  # raises, naming folder and extensions, if empty
  keys = folder_source.paths
  budget = pipeline.resolve_budget(max_skipped, len(keys))
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:  # PIL decodes without the GIL
    checked = list(pool.map(lambda k: _check(folder_source.folder, k), keys))
  skipped = {key: reason for key, _, reason in checked if reason is not None}
  for key, reason in skipped.items():
    log.warning("skipped bad image %s: %s", os.path.join(folder_source.folder, key), reason)
  good = [(key, meta) for key, meta, reason in checked if reason is None]
  if not good or len(skipped) > budget:
    listed = "; ".join(f"{k}: {r}" for k, r in list(skipped.items())[:5])
    raise pipeline.BadDataError(
        f"{len(skipped)} of {len(keys)} files under {folder_source.folder!r} are not readable "
        f"images, more than max_skipped={max_skipped!r} allows ({budget}); nothing was "
        f"written. Skipped: {listed}")
  os.makedirs(output, exist_ok=True)
  is_eval = {k: eval_fraction > 0 and sources.in_eval_split(k, eval_fraction) for k, _ in good}
  train = [(k, m) for k, m in good if not is_eval[k]]
  held_out = [(k, m) for k, m in good if is_eval[k]]
  result = {"train": [], "eval": [], "skipped": skipped}
  if train:
    result["train"] = _write_split(folder_source.folder, output, "train", train, num_shards)
  if held_out:
    result["eval"] = _write_split(folder_source.folder, output, "eval", held_out,
                                  num_eval_shards)
  log.info("wrote %d train and %d eval images to %s; skipped %d bad files", len(train),
           len(held_out), output, len(skipped))
  return result


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--folder", required=True, help="folder tree of images")
  parser.add_argument("--output", required=True, help="folder to write the shards into")
  parser.add_argument("--num_shards", type=int, default=16)
  parser.add_argument("--eval_fraction", type=float, default=0.0)
  parser.add_argument("--num_eval_shards", type=int, default=1)
  parser.add_argument("--max_skipped", type=str, default="0.01",
                      help="bad files tolerated: an integer count or a fraction like 0.01")
  parser.add_argument("--threads", type=int, default=8)
  args = parser.parse_args(argv)
  max_skipped = float(args.max_skipped) if "." in args.max_skipped else int(args.max_skipped)
  logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
  try:
    result = build_shards(args.folder, args.output, num_shards=args.num_shards,
                          eval_fraction=args.eval_fraction,
                          num_eval_shards=args.num_eval_shards, max_skipped=max_skipped,
                          threads=args.threads)
  except (ValueError, pipeline.BadDataError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"{len(result['train'])} train shards, {len(result['eval'])} eval shards, "
        f"{len(result['skipped'])} files skipped")
  return 0


if __name__ == "__main__":
  sys.exit(main())
