"""What every converter shares: the `Source` record, reading a checkpoint's state dict out of
the wrappers real files have, the `Weights` ledger that accounts for every tensor, PyTorch ->
Flax layouts, and writing the export.

A converter is a function `build(weights, **options) -> (config, variables)`: it takes each
tensor it maps with `weights.take(name, layout)`, lists the buffers it drops with
`weights.ignore(...)`, and returns the jaxtok run config and the model's variables.
`Source.run` then refuses the conversion, naming them, if any tensor was missing or left
unused, and `inference.assemble` refuses any shape that does not fit the model.
"""

import dataclasses
import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxtok import build, inference, weights as weight_files

# Keys of the wrapper dicts training scripts save around a state dict, in the order tried.
WRAPPERS = ("model", "state_dict", "module", "params", "net", "generator")
PREFIXES = ("module.", "_orig_mod.", "model.")  # DDP, torch.compile, Lightning
EMA_KEYS = ("ema", "model_ema")  # where use_ema finds the EMA weights (MAR: "model_ema")


@dataclasses.dataclass(frozen=True)
class Source:
  """One convertible published model."""

  name: str  # the `--from` name, e.g. "llamagen-vq16"
  files: tuple[str, ...]  # the released file names, e.g. ("vq_ds16_c2i.pt",)
  description: str  # one line: the model, the paper or repo, its size
  build: Callable[..., tuple[dict, dict]]  # (Weights, **options) -> (config, variables)
  options: tuple[str, ...] = ()  # keyword options `build` takes (besides the weights)

  def run(self, checkpoint: str, out: str, *, use_ema: bool = False, **options) -> str:
    """Converts `checkpoint` into the export directory `out`; returns its path."""
    self._check_options(options)
    state = state_dict(weight_files.read_object(checkpoint), use_ema=use_ema, where=checkpoint)
    config, variables = self.convert_state(state, checkpoint, **options)
    config = dict(config, converted_from={"source": self.name,
                                          "checkpoint": os.path.basename(checkpoint),
                                          "sha256": sha256(checkpoint), "ema": use_ema})
    inference.assemble(config, variables)  # refuses shapes that do not fit, by name
    return inference.save(out, config, variables)

  def _check_options(self, options) -> None:
    unknown = sorted(set(options) - set(self.options))
    if unknown:
      raise ValueError(f"source {self.name!r} takes no option {', '.join(unknown)}; its "
                       f"options: {list(self.options) or 'none'}")

  def convert_state(self, state: Mapping[str, np.ndarray], where: str = "checkpoint",
                    **options) -> tuple[dict, dict]:
    """(config, variables) from a flat state dict, every tensor accounted for: raises
    naming the missing, unused and misshapen ones. Shapes are not checked against the model
    here (`run` does, by `inference.assemble`)."""
    self._check_options(options)
    ledger = Weights(state, where)
    try:
      config, variables = self.build(ledger, **options)
    except Exception:
      # Missing or misshapen tensors explain a failed build best (unused ones do not: the
      # build stopped before taking them).
      ledger.check(unused=False)
      raise
    ledger.check()
    return config, variables


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def state_dict(obj: Any, *, use_ema: bool = False, where: str = "checkpoint") -> dict:
  """The flat {name: array} state dict inside a checkpoint object: unwraps {"model": ...}
  (or "ema" when `use_ema`, "state_dict", "module", ...), strips DDP / torch.compile /
  Lightning prefixes, and flattens nested (Flax) dicts with "/"."""
  if not isinstance(obj, Mapping):
    raise ValueError(f"{where}: holds a {type(obj).__name__}, not a state dict")
  if use_ema:
    key = next((k for k in EMA_KEYS if k in obj), None)
    if key is None:
      raise ValueError(f"{where}: use_ema asks for its 'ema' weights, but its top-level keys "
                       f"are {sorted(map(str, obj))[:8]}")
    obj = obj[key]
  while (inner := next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), Mapping)),
                        None)) is not None:
    obj = inner
  if not weight_files.flatten(obj):
    raise ValueError(f"{where}: no state dict found; top-level keys: "
                     f"{sorted(map(str, obj))[:8]} (expected tensors or one of {WRAPPERS})")
  flat = weight_files.flatten(obj, sep="/") if _is_nested(obj) else {
      str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
  for prefix in PREFIXES:
    if flat and all(k.startswith(prefix) for k in flat):
      flat = {k[len(prefix):]: v for k, v in flat.items()}
  return flat


def _is_nested(obj: Mapping) -> bool:
  """A Flax params tree: nested dicts of arrays, no array at the top."""
  return bool(obj) and all(isinstance(v, Mapping) for v in obj.values()) and any(
      isinstance(leaf, np.ndarray) for leaf in weight_files.flatten(obj).values())


class Weights:
  """A checkpoint's tensors, each to be taken once (converted to float32 by default) or
  ignored by name; `check()` raises naming every missing, unused or misshapen one."""

  def __init__(self, arrays: Mapping[str, np.ndarray], where: str = "checkpoint"):
    self.arrays = dict(arrays)
    self.where = where
    self.used: set[str] = set()
    self.missing: list[str] = []
    self.misshapen: list[str] = []

  def keys(self, pattern: str = "*") -> list[str]:
    """The names matching a glob pattern, e.g. "blocks.*.attn.wqkv.weight"."""
    return sorted(k for k in self.arrays if fnmatch.fnmatchcase(k, pattern))

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def take(self, name: str, layout: Callable[[np.ndarray], np.ndarray] | None = None, *,
           shape: tuple[int, ...] | None = None, dtype=np.float32) -> np.ndarray | None:
    """The tensor `name` (checked against `shape` if given, before `layout`), in `layout`
    (e.g. `conv`, `linear`); None when missing or misshapen (both reported by `check`)."""
    if name not in self.arrays:
      self.missing.append(name)
      return None
    self.used.add(name)
    value = np.asarray(self.arrays[name])
    if shape is not None and tuple(value.shape) != tuple(shape):
      self.misshapen.append(f"{name} has shape {tuple(value.shape)}, expected {tuple(shape)}")
      return None
    # copy=False: a float32 tensor (or a zero-stride stand-in for one, see `abstract`) stays
    # a view, so converting a multi-GB manifest checks its shapes without allocating them.
    value = value.astype(dtype, copy=False)
    return layout(value) if layout is not None else value

  def shape(self, name: str) -> tuple[int, ...]:
    """The shape of tensor `name`, to read a model's sizes from (does not take it)."""
    if name not in self.arrays:
      raise ValueError(f"{self.where} has no tensor {name!r}, which the converter reads the "
                       f"model's sizes from; its first names: {self.keys()[:6]}")
    return tuple(np.shape(self.arrays[name]))

  def num_indexed(self, prefix: str) -> int:
    """1 + the largest i of the names `prefix` + "i." ... (0 if none): the length of a
    PyTorch ModuleList, e.g. num_indexed("layers.") -> depth. Any tensor of an entry counts,
    so an entry that lacks some tensor is reported missing by `check`, not left unused."""
    found = [rest.split(".", 1)[0] for k in self.arrays if k.startswith(prefix)
             for rest in [k[len(prefix):]]]
    return 1 + max((int(i) for i in found if i.isdigit()), default=-1)

  def dense(self, name: str, out: dict, key: str, *, bias: bool = True) -> None:
    """A torch Linear `name` -> out["key/kernel"] (and out["key/bias"])."""
    out[f"{key}/kernel"] = self.take(f"{name}.weight", linear)
    if bias:
      out[f"{key}/bias"] = self.take(f"{name}.bias")

  def norm(self, name: str, out: dict, key: str) -> None:
    """A torch LayerNorm / GroupNorm `name` -> out["key/scale"], out["key/bias"]."""
    out[f"{key}/scale"] = self.take(f"{name}.weight")
    out[f"{key}/bias"] = self.take(f"{name}.bias")

  def ignore(self, *patterns: str) -> list[str]:
    """Marks the tensors matching these glob patterns as knowingly dropped (buffers such as
    usage counters or precomputed RoPE tables); returns their names."""
    names = [k for p in patterns for k in self.keys(p)]
    self.used.update(names)
    return names

  def check(self, *, unused: bool = True) -> None:
    """Raises ValueError naming every missing, misshapen and (if `unused`) unused tensor."""
    unused = sorted(set(self.arrays) - self.used) if unused else []
    problems = []
    for label, names in (("missing", self.missing), ("unused (not in the jaxtok model)", unused),
                         ("misshapen", self.misshapen)):
      if names:
        more = f" and {len(names) - 12} more" if len(names) > 12 else ""
        problems.append(f"{len(names)} {label}: {', '.join(names[:12])}{more}")
    if problems:
      raise ValueError(f"{self.where} does not fit: " + "; ".join(problems))


def abstract(tensors: Mapping[str, tuple[tuple[int, ...], str]]) -> dict[str, np.ndarray]:
  """A state dict of zero-stride stand-ins {name: zeros of (shape, dtype)}, no memory held:
  what a manifest (tensor names, shapes and dtypes of a released file) converts through
  `Source.build` to check every name and shape without the file."""
  return {name: np.broadcast_to(np.zeros((), np.dtype(dtype)), tuple(shape))
          for name, (shape, dtype) in tensors.items()}


def stack(arrays: list[np.ndarray]) -> np.ndarray:
  """np.stack, except that equal constant stand-ins (zero-stride views of one value, see
  `abstract`) stack into a view again instead of a materialised copy."""
  first = arrays[0]
  if (first.size and not any(first.strides)
      and all(a.shape == first.shape and a.size and not any(a.strides)
              and a.flat[0] == first.flat[0] for a in arrays)):
    return np.broadcast_to(first.flat[0], (len(arrays), *first.shape))
  return np.stack(arrays)


# PyTorch -> Flax layouts.
def conv(w: np.ndarray) -> np.ndarray:
  """Conv weight OIHW -> HWIO."""
  return np.transpose(w, (2, 3, 1, 0))


def linear(w: np.ndarray) -> np.ndarray:
  """Linear weight [out, in] -> Dense kernel [in, out]."""
  return np.transpose(w)


def nest(flat: Mapping[str, Any], sep: str = "/") -> dict:
  """{"a/b/c": x} -> {"a": {"b": {"c": x}}}."""
  tree: dict = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split(sep)
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  return tree


def read_tokenizer_config(path: str) -> dict:
  """The config of a tokenizer export directory (a converter's option `tokenizer`)."""
  file = os.path.join(path, inference.CONFIG_FILE)
  if not os.path.isfile(file):
    raise ValueError(f"tokenizer must be a jaxtok tokenizer export directory; {path!r} has "
                     f"no {inference.CONFIG_FILE}")
  with open(file) as f:
    config = json.load(f)
  if config.get("trainer") != "tokenizer":
    raise ValueError(f"tokenizer must be a tokenizer export; {path!r} holds a "
                     f"{config.get('trainer')!r} model")
  return config


def paired_tokenizer(default: dict | None, tokenizer: str | None, token_shape, *,
                     codebook_size: int, code_dim: int | None = None) -> dict | None:
  """The `tokenizer` entry of a converted generator: the config of the export directory
  `tokenizer` if given, else `default` (None: no entry). Refuses a tokenizer whose token grid,
  codebook size or (continuous tokens) latent channels differ from the generator's."""
  if tokenizer is not None:
    default = read_tokenizer_config(tokenizer)
  if default is None:
    return None
  model = build.tokenizer(default["model"], default["quantizer"])
  size = default["data"]["image_size"]
  grid = tuple(model.token_shape((size, size)))
  given = (grid, model.quantizer.codebook_size, model.quantizer.code_dim)
  wanted = (tuple(token_shape), codebook_size, given[2] if code_dim is None else code_dim)
  if given != wanted:
    raise ValueError(f"tokenizer {tokenizer or '(default)'}: makes {grid} tokens of "
                     f"{given[1]} codes and {given[2]} channels; the generator takes "
                     f"{wanted[0]} tokens of {wanted[1]} codes and {wanted[2]} channels")
  return default
