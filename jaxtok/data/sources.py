"""Grain random-access sources of images: a folder tree and ArrayRecord shards.

A source holds `len(source)` records and `source[i]` returns one record, a dict with
  "key":   a name for messages (a file path, or a shard path and record index);
and exactly one of
  "bytes": the encoded image file, as stored (decoded lazily by the pipeline's map),
  "image": an already decoded uint8 [H, W, 3] RGB array (see `samples.SampleCrops`),
  "error": why the record could not be read (the pipeline counts and skips it).
Sources never decode: a bad file costs nothing until the pipeline reaches it, and its index
stays in place, so shuffling, sharding and resuming see the same records in the same order.

ArrayRecord records are `encode_record(...)` bytes: b"JXT1", a 4-byte big-endian length, that
many bytes of UTF-8 JSON metadata (at least {"key": relative path}), then the image file bytes.
Build shards from a folder with `tools/make_arrayrecord.py`.
"""

import collections
import glob
import hashlib
import json
import os
import struct
from collections.abc import Sequence

from jaxtok.data import samples

# Every format here decodes with Pillow (`transforms.decode_image`); a GIF gives its first frame.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
SPLITS = ("all", "train", "eval")
_MAGIC = b"JXT1"


def in_eval_split(key: str, eval_fraction: float) -> bool:
  """Whether `key` (a relative path) falls in the held-out split: a stable hash of the key.

  The split of one file never depends on which other files exist, so adding images to a
  folder moves none of the old ones across the train / eval boundary.
  """
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < eval_fraction * 2.0**64


def _check_split(split: str, eval_fraction: float) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
  if not 0.0 <= eval_fraction < 1.0:
    raise ValueError(f"eval_fraction must be in [0, 1); got {eval_fraction}")
  if split == "eval" and eval_fraction == 0.0:
    raise ValueError("split='eval' needs eval_fraction > 0; got eval_fraction=0.0")


def list_images(folder: str, *, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                split: str = "all", eval_fraction: float = 0.0) -> list[str]:
  """Sorted '/'-separated paths, relative to `folder`, of files with an image extension.

  The walk is recursive and case-insensitive on extensions; directory symlinks are not
  followed. `split` keeps all files, or those outside / inside the `eval_fraction` hash split.
  """
  _check_split(split, eval_fraction)
  if not os.path.isdir(folder):
    raise ValueError(f"folder must be an existing directory; got {folder!r}")
  suffixes = tuple(e.lower() for e in extensions)
  found = []
  for root, dirs, files in os.walk(folder):
    dirs.sort()
    for name in files:
      if name.lower().endswith(suffixes):
        found.append(os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/"))
  found.sort()
  if split == "all":
    return found
  return [k for k in found if in_eval_split(k, eval_fraction) == (split == "eval")]


def other_files(folder: str, *, extensions: Sequence[str] | None = IMAGE_EXTENSIONS,
                exclude: str | None = None) -> dict[str, int]:
  """{extension (lower case, or the name if it has none): count} of the files under `folder`
  that `list_images` leaves out (all files if extensions is None), most common first; the
  folder `exclude` (say, an output folder inside `folder`) is not searched."""
  suffixes = tuple(e.lower() for e in extensions or ())
  skip = os.path.abspath(exclude) if exclude is not None else None
  found = collections.Counter()
  for root, dirs, files in os.walk(folder):
    dirs[:] = sorted(d for d in dirs if os.path.abspath(os.path.join(root, d)) != skip)
    found.update(os.path.splitext(name)[1].lower() or name for name in files
                 if not (suffixes and name.lower().endswith(suffixes)))
  return dict(sorted(found.items(), key=lambda item: (-item[1], item[0])))


def no_images_message(folder: str, *, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                      what: str = "") -> str:
  """Why `folder` gave no images: the extensions searched and the files found instead."""
  found = other_files(folder, extensions=None)
  listed = ", ".join(f"{ext} ({n})" for ext, n in list(found.items())[:5])
  listed = f"; found {sum(found.values())} files: {listed}" if found else "; found no files"
  return (f"no image files{what} under folder {folder!r}; searched recursively for extensions "
          f"{tuple(extensions)} (case-insensitive){listed}")


class FolderSource:
  """Every image file under `folder` (recursively), in sorted path order.

  Records: {"key": absolute path, "bytes": file contents} or {"key", "error"} when the file
  cannot be read. Raises ValueError at construction, naming the folder and the extensions
  searched, when no file matches, so an empty dataset fails at once instead of hanging.
  """

  def __init__(self, folder: str, *, extensions: Sequence[str] = IMAGE_EXTENSIONS,
               split: str = "all", eval_fraction: float = 0.0):
    self.folder = os.path.abspath(folder)
    self.paths = list_images(self.folder, extensions=extensions, split=split,
                             eval_fraction=eval_fraction)
    if not self.paths:
      what = "" if split == "all" else f" in split {split!r} (eval_fraction={eval_fraction})"
      raise ValueError(no_images_message(self.folder, extensions=extensions, what=what))

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict:
    path = os.path.join(self.folder, self.paths[index])
    try:
      with open(path, "rb") as f:
        return {"key": path, "bytes": f.read()}
    except OSError as e:  # vanished or unreadable: a bad record, not a crashed pipeline
      return {"key": path, "error": f"cannot read file: {e}"}

  def __repr__(self) -> str:
    return f"FolderSource({self.folder!r}, {len(self)} files)"


def encode_record(image_bytes: bytes, meta: dict) -> bytes:
  """One ArrayRecord record: magic, JSON metadata (must contain "key"), image bytes."""
  if "key" not in meta:
    raise ValueError(f"meta must contain 'key'; got keys {sorted(meta)}")
  header = json.dumps(meta, sort_keys=True).encode("utf-8")
  return _MAGIC + struct.pack(">I", len(header)) + header + image_bytes


def decode_record(data: bytes) -> tuple[dict, bytes]:
  """`encode_record` inverse: (metadata, image bytes). Raises ValueError on foreign data."""
  if data[:4] != _MAGIC or len(data) < 8:
    raise ValueError(f"not a jaxtok image record (starts with {data[:8]!r})")
  (size,) = struct.unpack(">I", data[4:8])
  if len(data) < 8 + size:
    raise ValueError(f"record header says {size} metadata bytes; only {len(data) - 8} exist")
  return json.loads(data[8:8 + size].decode("utf-8")), data[8 + size:]


def expand_paths(paths: str | Sequence[str]) -> list[str]:
  """A glob pattern, a file, or a list of either -> sorted list of existing files."""
  patterns = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  files = []
  for pattern in patterns:
    matches = sorted(glob.glob(os.fspath(pattern)))
    if not matches:
      raise ValueError(f"paths must name existing ArrayRecord files; {pattern!r} matches none")
    files.extend(matches)
  return files


class ArrayRecordSource:
  """Images stored in ArrayRecord shards written by tools/make_arrayrecord.py.

  `paths`: a glob ("/data/train-*.array_record"), a file, or a list; shards are read in
  sorted order. Records: {"key", "bytes", "meta"}, or {"key", "error"} for a record that is not
  a jaxtok image record.
  """

  def __init__(self, paths: str | Sequence[str]):
    import grain  # pylint: disable=g-import-not-at-top  # keeps `import sources` light

    self.paths = expand_paths(paths)
    self._records = grain.sources.ArrayRecordDataSource(self.paths)
    if len(self._records) == 0:
      raise ValueError(f"ArrayRecord files {self.paths} hold no records")

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    data = self._records[index]
    try:
      meta, image_bytes = decode_record(data)
    except ValueError as e:
      return {"key": f"record {index} of {self.paths}", "error": str(e)}
    return {"key": f"{meta['key']} (record {index})", "bytes": image_bytes, "meta": meta}

  def __repr__(self) -> str:
    return f"ArrayRecordSource({len(self.paths)} shards, {len(self)} records)"


def from_config(data_config, split: str):
  """The record source of `split` ("train" or "eval") that `data.source` names."""
  kind = data_config.source
  if kind == "samples":  # bundled photo crops: the demo and tests
    count = data_config.num_train if split == "train" else data_config.num_eval
    return samples.SampleCrops(count=count, size=data_config.image_size, seed=0, split=split)
  if kind == "folder":  # eval: a folder of its own (eval_path), else a hash split of path
    if split == "eval" and data_config.eval_path:
      return FolderSource(data_config.eval_path)
    return FolderSource(data_config.path, split=split, eval_fraction=data_config.eval_fraction)
  if kind == "arrayrecord":
    return ArrayRecordSource(data_config.path if split == "train" else data_config.eval_path)
  raise ValueError(f"data.source must be 'samples', 'folder' or 'arrayrecord'; got {kind!r}")
