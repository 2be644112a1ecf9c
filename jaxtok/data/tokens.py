"""Token shards: images encoded by a tokenizer, stored as ArrayRecord files for generators.

A token directory holds `tokens-SSSSS-of-NNNNN.array_record` shards, one record per image (its
int32 token ids, little-endian, in the grid `token_shape`), and `metadata.json`: the token
grid, the codebook size, the tokenizer's config, the record count, the skipped files and the
count of files left out for their extension.
`TokenSource` reads them back as a Grain random-access source of int32 arrays.

Latent shards (continuous tokens of a KL tokenizer, for MAR) are the same files with
`dtype` "float16" or "float32" in the metadata: each record one latent grid [h, w, C] in
that dtype (little-endian), read back as float32; their codebook_size is 0.
"""

import functools
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
from array_record.python import array_record_module

from jaxtok.data import pipeline, sources, transforms

METADATA = "metadata.json"
# Record dtypes: the metadata's name -> the little-endian numpy dtype of the bytes.
RECORD_DTYPES = {"int32": "<i4", "float16": "<f2", "float32": "<f4"}


def shard_name(index: int, count: int) -> str:
  return f"tokens-{index:05d}-of-{count:05d}.array_record"


def parse_resolution(value: str | int) -> str | int:
  """A resolution for token shards: "train" or a side N (see `transforms.parse_resolution`).

  "native" is refused: a token directory holds one token grid, and images of different sizes
  give different grids.
  """
  resolution = transforms.parse_resolution(value)
  if resolution == "native":
    raise ValueError("resolution 'native' cannot make token shards: every record of a token "
                     "directory has one token grid, and images of different sizes give "
                     "different grids; use 'train' (the training crop size) or a fixed side N")
  return resolution


def _write_shards(out: str, num_shards: int, results, dtype: str = "int32"
                  ) -> tuple[list[str], list[int]]:
  """Writes the token rows of `results` ((keys, images, ids) batches) to the shards in turn,
  under temporary names that a failure removes; returns (keys written, token_shape).
  dtype "float16" / "float32" stores latents (float rows) instead of ids."""
  if dtype not in RECORD_DTYPES:
    raise ValueError(f"dtype must be one of {sorted(RECORD_DTYPES)}; got {dtype!r}")
  latents = dtype != "int32"
  paths = [os.path.join(out, shard_name(i, num_shards) + ".tmp") for i in range(num_shards)]
  writers = [array_record_module.ArrayRecordWriter(p, "group_size:1") for p in paths]
  written, token_shape = [], None
  try:
    for batch_keys, _, ids in results:
      if latents != np.issubdtype(ids.dtype, np.floating):
        want = "float latents" if latents else "integer token ids"
        raise TypeError(f"encode must return {want} for dtype {dtype!r}; got dtype {ids.dtype}")
      token_shape = list(ids.shape[1:])
      for key, row in zip(batch_keys, ids):
        writers[len(written) % num_shards].write(
            np.asarray(row).astype(RECORD_DTYPES[dtype]).tobytes())
        written.append(key)
  except BaseException:
    for writer, path in zip(writers, paths):
      writer.close()
      os.remove(path)
    raise
  for writer in writers:
    writer.close()
  return written, token_shape


def _publish(out: str, metadata: dict) -> None:
  """Moves the finished shards into place, then writes metadata.json: a directory never pairs
  new shards with an old metadata.json, and a failed run leaves an old one intact. Shards of
  an earlier run that the new one does not overwrite are removed."""
  old = os.path.join(out, METADATA)
  if os.path.exists(old):
    try:
      with open(old) as f:
        stale = set(json.load(f).get("shards", ())) - set(metadata["shards"])
    except (OSError, ValueError, AttributeError):  # not our metadata: leave its files alone
      stale = set()
    for name in stale:
      if os.path.basename(name) == name and os.path.isfile(os.path.join(out, name)):
        os.remove(os.path.join(out, name))
    os.remove(old)
  for name in metadata["shards"]:
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
  with open(os.path.join(out, METADATA + ".tmp"), "w") as f:
    json.dump(metadata, f, indent=2)
  os.replace(os.path.join(out, METADATA + ".tmp"), os.path.join(out, METADATA))


def tokenize_folder(encode: Callable[[np.ndarray], np.ndarray], folder: str, out: str, *,
                    image_size: int, codebook_size: int, tokenizer_config: dict,
                    resolution: str | int = "train", num_shards: int = 1, batch_size: int = 32,
                    max_skipped: int | float = 0.01, progress: bool = False,
                    dtype: str = "int32") -> dict:
  """Encodes every image of `folder` into token shards in `out`; returns out/metadata.json.

  Images are resized and center-cropped to `resolution`: "train" (image_size, the tokenizer's
  training crop) or a side N. `encode` maps uint8 [B, S, S, 3] to int ids [B, *token_shape].
  Records go to the shards in turn, in the sorted order of the files. Bad files are skipped
  within `max_skipped` (see `pipeline.resolve_budget`) and listed in the metadata; past it,
  `pipeline.BadDataError` and no new metadata. `progress`: a compile line and a progress bar.
  dtype "float16" / "float32": `encode` returns float latents [B, h, w, C], stored as such.
  """
  resolution = parse_resolution(resolution)
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1; got {num_shards}")
  keys = sources.list_images(folder)
  if not keys:
    raise ValueError(sources.no_images_message(folder))
  side = image_size if resolution == "train" else resolution
  pipeline.output_dir(out)
  skipped = {}
  images = pipeline.read_files(folder, keys, functools.partial(transforms.eval_transform,
                                                                size=side),
                               max_skipped=max_skipped, skipped=skipped)
  results = pipeline.run_batches(encode, pipeline.batch_by_shape(images, batch_size),
                                 total=len(keys), skipped=skipped, desc="tokenize",
                                 progress=progress, pad_to=min(batch_size, len(keys)))
  written, token_shape = _write_shards(out, num_shards, results, dtype)
  metadata = {"token_shape": token_shape, "codebook_size": int(codebook_size),
              "dtype": dtype, "resolution": resolution, "image_size": side,
              "num_records": len(written),
              "shards": [shard_name(i, num_shards) for i in range(num_shards)],
              "keys": written, "skipped": skipped,
              "ignored": sources.other_files(folder, exclude=out),
              "tokenizer_config": tokenizer_config}
  _publish(out, metadata)
  return metadata


class TokenSource:
  """Random access to the token grids of a token directory (a Grain data source).

  Records are read in shard-interleaved order, so record i is the i-th image tokenized.
  """

  def __init__(self, directory: str):
    path = os.path.join(directory, METADATA)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{directory!r} holds no {METADATA}: make it with "
                              f"`jaxtok tokenize`")
    with open(path) as f:
      self.metadata = json.load(f)
    self.token_shape = tuple(self.metadata["token_shape"])
    self.codebook_size = self.metadata["codebook_size"]
    self.dtype = self.metadata.get("dtype", "int32")
    if self.dtype not in RECORD_DTYPES:
      raise ValueError(f"{path}: dtype must be one of {sorted(RECORD_DTYPES)}; got "
                       f"{self.dtype!r}")
    self._readers = [array_record_module.ArrayRecordReader(os.path.join(directory, name))
                     for name in self.metadata["shards"]]

  def __len__(self) -> int:
    return self.metadata["num_records"]

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < len(self):
      raise IndexError(f"record index must be in [0, {len(self)}); got {index}")
    n = len(self._readers)
    data = self._readers[index % n].read([index // n])[0]
    values = np.frombuffer(data, RECORD_DTYPES[self.dtype])
    out_dtype = np.int32 if self.dtype == "int32" else np.float32
    return values.astype(out_dtype).reshape(self.token_shape)


class LabelledTokens:
  """Records {"tokens": int32 grid, "label": int32} of a TokenSource (label 0 if unlabelled)."""

  def __init__(self, source: TokenSource, labels: np.ndarray | None):
    self.source, self.labels = source, labels

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    label = 0 if self.labels is None else self.labels[index]
    return {"tokens": self.source[index], "label": np.int32(label)}


def labelled_tokens(path: str, labels: str, *, token_shape: Sequence[int], codebook_size: int,
                    num_classes: int) -> LabelledTokens:
  """The token directory `path` checked against a generator's token_shape, codebook_size and
  num_classes; labels "none" (unconditional: num_classes must be 0) or "metadata" (one class
  id per record in metadata.json's "labels" list)."""
  source = TokenSource(path)
  if tuple(source.token_shape) != tuple(token_shape) or source.codebook_size != codebook_size:
    raise ValueError(
        f"data.path={path!r} holds tokens {tuple(source.token_shape)} of "
        f"{source.codebook_size} codes; the model is configured for model.token_shape="
        f"{tuple(token_shape)}, model.codebook_size={codebook_size}")
  if labels == "none":
    if num_classes != 0:
      raise ValueError(f"data.labels='none' trains an unconditional model: set "
                       f"model.num_classes=0; got {num_classes}")
    return LabelledTokens(source, None)
  if labels == "metadata":
    ids = np.asarray(source.metadata.get("labels", []), np.int32)
    if ids.shape != (len(source),) or num_classes < 1:
      raise ValueError(f"data.labels='metadata' needs model.num_classes >= 1 (got "
                       f"{num_classes}) and a 'labels' list of {len(source)} class ids in "
                       f"{path}/{METADATA} (found {ids.shape[0]})")
    if ids.min() < 0 or ids.max() >= num_classes:
      raise ValueError(f"metadata labels must lie in [0, {num_classes}); got "
                       f"[{ids.min()}, {ids.max()}]")
    return LabelledTokens(source, ids)
  raise ValueError(f"data.labels must be 'none' or 'metadata'; got {labels!r}")


def labelled_latents(path: str, labels: str, *, token_shape: Sequence[int], token_dim: int,
                     num_classes: int) -> LabelledTokens:
  """A latent directory (dtype float16 / float32, records [*token_shape, token_dim]) checked
  against a continuous-token generator; labels as `labelled_tokens`. Records' "tokens" are
  float32."""
  source = TokenSource(path)
  want = (*tuple(token_shape), int(token_dim))
  if source.dtype == "int32" or tuple(source.token_shape) != want:
    raise ValueError(
        f"data.path={path!r} holds {source.dtype} records {tuple(source.token_shape)}; the model "
        f"reads float latents {want} (model.token_shape + (model.token_dim,)): write them "
        f"with a KL tokenizer's latents")
  return labelled_tokens(path, labels, token_shape=source.token_shape,
                         codebook_size=source.codebook_size, num_classes=num_classes)
