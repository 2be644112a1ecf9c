"""Checkpoint files of other frameworks as flat {name: NumPy array} dicts, without importing
them: PyTorch (`.pt`, `.pth`, `.bin`, `.ckpt`; zip, legacy and TorchScript), `.safetensors`,
and Flax `.msgpack`. The floor under `convert` (published checkpoints) and `eval` (Inception)."""

import json
import os
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxtok.weights import torch_files

__all__ = ["read", "read_object", "flatten", "torch_files"]

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """A `.safetensors` file: an 8-byte little-endian header length, a JSON header of
  {name: {dtype, shape, data_offsets}}, then the tensors' bytes."""
  with open(path, "rb") as f:
    size = int.from_bytes(f.read(8), "little")
    if not 0 < size < 1 << 30:
      raise ValueError(f"{path}: not a safetensors file (header length {size})")
    header = json.loads(f.read(size))
    data = f.read()
  out = {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    if spec["dtype"] not in _SAFETENSORS_DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has dtype {spec['dtype']}, which jaxtok does "
                       f"not read (known: {sorted(_SAFETENSORS_DTYPES)})")
    start, end = spec["data_offsets"]
    out[name] = np.frombuffer(data[start:end], _SAFETENSORS_DTYPES[spec["dtype"]]).reshape(
        spec["shape"]).copy()
  return out


def _is_msgpack_map(path: str) -> bool:
  """A file without a known suffix that starts as a msgpack map: a Flax checkpoint as
  `flax.training.checkpoints` names them (`checkpoint_<step>`, MaskGIT's
  `tokenizer_imagenet256_checkpoint`)."""
  if os.path.splitext(path)[1].lower() in (*TORCH_SUFFIXES, ".safetensors"):
    return False
  with open(path, "rb") as f:
    first = f.read(1)
  return bool(first) and (0x80 <= first[0] <= 0x8F or first[0] in (0xDE, 0xDF))


def read_object(path: str) -> Any:
  """The whole object a checkpoint file holds (wrappers such as {"model": ..., "args": ...}
  kept), tensors as NumPy arrays."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  lower = path.lower()
  if lower.endswith(".safetensors"):
    return read_safetensors(path)
  if lower.endswith(".msgpack") or _is_msgpack_map(path):
    from flax import serialization  # pylint: disable=g-import-not-at-top

    with open(path, "rb") as f:
      return serialization.msgpack_restore(f.read())
  if lower.endswith(TORCH_SUFFIXES):
    obj = torch_files.read(path)
    if isinstance(obj, torch_files.Opaque) and obj.qualname.startswith("__torch__."):
      return torch_files.script_parameters(obj)  # a TorchScript module
    return obj
  raise ValueError(f"checkpoint {path!r}: unknown file type; expected one of "
                   f"{[*TORCH_SUFFIXES, '.safetensors', '.msgpack']} or a Flax msgpack "
                   f"checkpoint without a suffix")


def flatten(tree: Any, sep: str = ".", prefix: str = "") -> dict[str, np.ndarray]:
  """{"a.b.c": array} for every array leaf of nested mappings; other leaves are dropped."""
  if isinstance(tree, np.ndarray):
    return {prefix: tree}
  if not isinstance(tree, Mapping):
    return {}
  out = {}
  for key, value in tree.items():
    out.update(flatten(value, sep, f"{prefix}{sep}{key}" if prefix else str(key)))
  return out


def read(path: str, sep: str = ".") -> dict[str, np.ndarray]:
  """Every array in a checkpoint file, by its flat name (nested mappings joined by `sep`)."""
  return flatten(read_object(path), sep)
