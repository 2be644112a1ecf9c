"""PyTorch checkpoint files read without torch: `torch.save` zip archives (torch >= 1.6), the
legacy pickle stream before them, and TorchScript archives (`torch.jit.save`).

A file is unpickled with an allow-list, like `torch.load(weights_only=True)`: tensors become
NumPy arrays (bf16 as `ml_dtypes.bfloat16`), containers and scalars stay Python values, and any
other class (an `argparse.Namespace` of training args, a TorchScript module) becomes an `Opaque`
record of its constructor arguments and state. Nothing from the file is ever executed.
"""

import io
import pickle
import struct
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

# Storage class names (torch.FloatStorage, ...) and dtype names -> NumPy dtypes.
_DTYPES = {
    "Double": np.float64, "Float": np.float32, "Half": np.float16,
    "BFloat16": ml_dtypes.bfloat16, "Long": np.int64, "Int": np.int32, "Short": np.int16,
    "Char": np.int8, "Byte": np.uint8, "Bool": np.bool_,
}
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
_SAFE = {("collections", "OrderedDict"), ("builtins", "set"), ("builtins", "frozenset"),
         ("builtins", "slice"), ("builtins", "complex"), ("builtins", "bytearray")}


class Opaque:
  """A pickled object of a class outside the allow-list: its class path (`qualname`),
  constructor arguments and state (for a TorchScript module: its attributes, parameters among
  them). Each such class is a subclass made on the fly, so pickle's NEWOBJ and BUILD work."""

  qualname = "?"

  def __new__(cls, *args):
    self = object.__new__(cls)
    self.args, self.state = args, None
    return self

  def __setstate__(self, state):
    self.state = state

  def __repr__(self):
    return f"Opaque({self.qualname})"


class _Storage:
  def __init__(self, data: np.ndarray):
    self.data = data


class _StorageType:
  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor(storage: _Storage, offset, size, stride, *unused, dtype=None):
  data = storage.data if dtype is None else storage.data.view(dtype)
  if not size:
    return np.array(data[offset])
  itemsize = data.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(data[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))
  return np.array(view)  # owns its memory, contiguous


def _rebuild_tensor_v3(storage, offset, size, stride, requires_grad, hooks, dtype, *unused):
  return _rebuild_tensor(storage, offset, size, stride, dtype=dtype)


def _rebuild_parameter(data, *unused):
  return data


def _opaque_class(qualname: str) -> type:
  return type(qualname.rpartition(".")[2], (Opaque,), {"qualname": qualname})


def _reconstruct(cls, base, state=None):  # copyreg._reconstructor
  return cls() if isinstance(cls, type) else cls(*(() if state is None else (state,)))


class _Unpickler(pickle.Unpickler):
  """Unpickles with the allow-list; `load_storage(key, dtype, numel)` gives storages' data."""

  def __init__(self, file, load_storage):
    super().__init__(file, encoding="utf-8")
    self._load_storage = load_storage
    self._storages: dict[str, _Storage] = {}

  def find_class(self, module: str, name: str):
    if (module, name) in _SAFE:
      return super().find_class(module, name)
    if module == "torch._utils":
      table = {"_rebuild_tensor": _rebuild_tensor, "_rebuild_tensor_v2": _rebuild_tensor,
               "_rebuild_tensor_v3": _rebuild_tensor_v3, "_rebuild_parameter": _rebuild_parameter,
               "_rebuild_parameter_with_state": _rebuild_parameter}
      if name in table:
        return table[name]
    if module == "torch" and name.endswith("Storage") and name[:-7] in _DTYPES:
      return _StorageType(_DTYPES[name[:-7]])
    if module == "torch" and name == "UntypedStorage":
      return _StorageType(np.uint8)
    if module == "torch" and name in _TORCH_DTYPES:
      return np.dtype(_TORCH_DTYPES[name])
    if module == "copyreg" and name == "_reconstructor":
      return _reconstruct
    return _opaque_class(f"{module}.{name}")

  def persistent_load(self, pid):
    kind, storage_type, key, _, numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
    if key not in self._storages:
      dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else np.uint8
      self._storages[key] = _Storage(self._load_storage(str(key), np.dtype(dtype), int(numel)))
    return self._storages[key]


def _read_zip(path: str, member: str) -> Any:
  """Unpickles `<archive>/<member>` of a torch zip archive (`data.pkl`, TorchScript too)."""
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith(f"/{member}") and n.count("/") == 1]
    if not pickles:
      raise ValueError(f"{path}: a zip file but not a PyTorch checkpoint (no */{member})")
    prefix = pickles[0][:-len(member)]

    def load_storage(key, dtype, numel):
      raw = archive.read(f"{prefix}data/{key}")
      return np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize).copy()

    with archive.open(pickles[0]) as f:
      return _Unpickler(io.BytesIO(f.read()), load_storage).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def read(path: str) -> Any:
  """The object a PyTorch checkpoint file holds, tensors as NumPy arrays (module objects as
  `Opaque`; a TorchScript file's root module is `Opaque`, see `script_parameters`)."""
  if zipfile.is_zipfile(path):
    return _read_zip(path, "data.pkl")
  return _read_legacy(path)


def _read_legacy(path: str) -> Any:
  """The pre-1.6 `torch.save` stream: magic, protocol, sys info, the object, its storage keys,
  then each storage as an 8-byte element count and its raw bytes. The object is unpickled twice:
  once to learn the storages' dtypes, once more to build its tensors from them."""
  with open(path, "rb") as f:
    stream = f.read()
  storages: dict[str, np.ndarray] = {}
  specs: dict[str, np.dtype] = {}
  buf = io.BytesIO(stream)
  header = pickle.Unpickler(buf)
  if header.load() != _LEGACY_MAGIC:
    raise ValueError(f"{path}: not a PyTorch checkpoint (no zip archive, no legacy magic)")
  header.load(), header.load()
  start = buf.tell()

  def learn_dtype(key, dtype, numel):
    specs[key] = dtype
    return np.zeros(numel, dtype)

  _Unpickler(buf, learn_dtype).load()
  for key in pickle.Unpickler(buf).load():
    (count,) = struct.unpack("<q", buf.read(8))
    dtype = specs[str(key)]
    storages[str(key)] = np.frombuffer(buf.read(count * dtype.itemsize), dtype=dtype).copy()
  buf.seek(start)
  return _Unpickler(buf, lambda key, dtype, numel: storages[key]).load()


def script_parameters(root: Opaque, prefix: str = "") -> dict[str, np.ndarray]:
  """{"conv.weight": array, ...}: every array attribute of a TorchScript module tree."""
  out = {}
  state = root.state if isinstance(root.state, dict) else {}
  for name, value in state.items():
    path = f"{prefix}{name}"
    if isinstance(value, np.ndarray):
      out[path] = value
    elif isinstance(value, Opaque):
      out.update(script_parameters(value, f"{path}."))
  return out
