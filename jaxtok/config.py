"""Experiment configs: Python files with `get_config(arg) -> ConfigDict`, plus overrides.

A config is named `path/to/file.py` or `path/to/file.py:arg` (the text after the colon goes to
`get_config`), as in big_vision. A path that is not a file here is looked up among the configs
shipped in the package (jaxtok/configs/): `configs/demo/tokenizer.py` works from any directory.
Overrides are `x.y=value` strings, as `--config.x.y=value` on the command line: values are
parsed as Python literals (`10`, `1e-3`, `(1, 2)`, `True`) and fall back to plain strings; the
key must already exist, so a typo cannot pass silently.
"""

import ast
import importlib.resources
import importlib.util
import os
from collections.abc import Iterable

import ml_collections


def _parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def packaged_configs():
  """The folder of configs shipped inside the package."""
  return importlib.resources.files("jaxtok") / "configs"


def resolve_path(path: str) -> str:
  """`path` if it is a .py file; else the packaged config of that name (a leading `configs/`
  or `jaxtok/configs/` dropped)."""
  if path.endswith(".py") and os.path.isfile(path):
    return path
  relative = path.replace(os.sep, "/")
  for prefix in ("jaxtok/configs/", "configs/"):
    if relative.startswith(prefix):
      relative = relative[len(prefix):]
      break
  packaged = packaged_configs().joinpath(*relative.split("/"))
  if path.endswith(".py") and packaged.is_file():
    return str(packaged)
  raise FileNotFoundError(f"config must be an existing .py file or a packaged one such as "
                          f"configs/demo/tokenizer.py (optionally 'file.py:arg'); got {path!r}")


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads `spec` ("file.py" or "file.py:arg") and applies `overrides` ("a.b=value")."""
  path, _, arg = spec.partition(":")
  path = resolve_path(path)
  module_spec = importlib.util.spec_from_file_location(
      f"jaxtok_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path} must define get_config(arg=None)")
  config = module.get_config(arg or None)
  for item in overrides:
    apply_override(config, item)
  return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """Sets one "a.b.c=value" override in place; the key a.b.c must exist."""
  key, sep, text = item.partition("=")
  if not sep or not key:
    raise ValueError(f"config overrides look like 'a.b=value'; got {item!r}")
  *parents, leaf = key.split(".")
  node = config
  for i, name in enumerate(parents):
    if name not in node:
      raise ValueError(f"config has no field {'.'.join(parents[:i + 1])!r} (override {item!r})")
    node = node[name]
  if leaf not in node:
    known = ", ".join(sorted(node.keys()))
    raise ValueError(f"config has no field {key!r} (override {item!r}); "
                     f"fields there: {known}")
  value = _parse_value(text)
  old = node[leaf]
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, str) and not isinstance(value, str):
    value = text  # a string field keeps the text as written ("1e-3" stays a name, say)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  try:
    node[leaf] = value
  except TypeError as e:
    raise ValueError(f"override {item!r}: {e}") from None
