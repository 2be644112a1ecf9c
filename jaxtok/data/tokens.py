"""Token shards: images encoded by a tokenizer, stored as ArrayRecord files for generators.

A token directory holds `tokens-SSSSS-of-NNNNN.array_record` shards, one record per image (its
int32 token ids, little-endian, in the grid `token_shape`), and `metadata.json`: the token
grid, the codebook size, the tokenizer's config, the record count and the skipped files.
`TokenSource` reads them back as a Grain random-access source of int32 arrays.
"""

import json
import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
from array_record.python import array_record_module

from jaxtok.data import sources, transforms

log = logging.getLogger(__name__)
METADATA = "metadata.json"


def shard_name(index: int, count: int) -> str:
  return f"tokens-{index:05d}-of-{count:05d}.array_record"


def _batches(folder: str, keys: Sequence[str], image_size: int, batch_size: int, skipped: dict):
  """(keys, uint8 [b, S, S, 3]) batches of the decodable images; bad files go to `skipped`."""
  batch_keys, images = [], []
  for key in keys:
    try:
      with open(os.path.join(folder, key), "rb") as f:
        images.append(transforms.eval_transform(transforms.decode_image(f.read()), image_size))
      batch_keys.append(key)
    except Exception as e:  # pylint: disable=broad-except  # any unreadable file is skipped
      log.warning("skipping %s: %s", key, e)
      skipped[key] = str(e)
    if len(images) == batch_size:
      yield batch_keys, np.stack(images)
      batch_keys, images = [], []
  if images:
    yield batch_keys, np.stack(images)


def tokenize_folder(encode: Callable[[np.ndarray], np.ndarray], folder: str, out: str, *,
                    image_size: int, codebook_size: int, tokenizer_config: dict,
                    num_shards: int = 1, batch_size: int = 32,
                    max_skipped: int | float = 0.01) -> dict:
  """Encodes every image of `folder` (center crop at image_size) into token shards in `out`.

  `encode` maps uint8 [B, S, S, 3] to int ids [B, *token_shape]. Records go to shards in turn.
  Returns the metadata written to out/metadata.json.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1; got {num_shards}")
  keys = sources.list_images(folder)
  if not keys:
    raise ValueError(f"no images under {folder!r} (searched {sources.IMAGE_EXTENSIONS})")
  budget = max_skipped if isinstance(max_skipped, int) else int(max_skipped * len(keys))
  os.makedirs(out, exist_ok=True)
  writers = [array_record_module.ArrayRecordWriter(os.path.join(out, shard_name(i, num_shards)),
                                                   "group_size:1") for i in range(num_shards)]
  skipped, written, token_shape = {}, [], None
  try:
    for batch_keys, images in _batches(folder, keys, image_size, batch_size, skipped):
      if len(skipped) > budget:
        break
      ids = np.asarray(encode(images))
      if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"encode must return integer token ids; got dtype {ids.dtype}")
      token_shape = list(ids.shape[1:])
      for key, row in zip(batch_keys, ids):
        writers[len(written) % num_shards].write(row.astype("<i4").tobytes())
        written.append(key)
  finally:
    for w in writers:
      w.close()
  if len(skipped) > budget:
    raise ValueError(f"{len(skipped)} unreadable files under {folder!r}, over the budget of "
                     f"{budget} (max_skipped={max_skipped}); first: {sorted(skipped)[:3]}")
  if not written:
    raise ValueError(f"no readable images under {folder!r}; skipped: {sorted(skipped)[:3]}")
  metadata = {"token_shape": token_shape, "codebook_size": int(codebook_size),
              "dtype": "int32", "image_size": image_size, "num_records": len(written),
              "shards": [shard_name(i, num_shards) for i in range(num_shards)],
              "keys": written, "skipped": skipped, "tokenizer_config": tokenizer_config}
  with open(os.path.join(out, METADATA), "w") as f:
    json.dump(metadata, f, indent=2)
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
    self._readers = [array_record_module.ArrayRecordReader(os.path.join(directory, name))
                     for name in self.metadata["shards"]]

  def __len__(self) -> int:
    return self.metadata["num_records"]

  def __getitem__(self, index: int) -> np.ndarray:
    if not 0 <= index < len(self):
      raise IndexError(f"record index must be in [0, {len(self)}); got {index}")
    n = len(self._readers)
    data = self._readers[index % n].read([index // n])[0]
    return np.frombuffer(data, "<i4").astype(np.int32).reshape(self.token_shape)


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
