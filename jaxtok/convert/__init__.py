"""Published checkpoints -> jaxtok exports: `convert(source, checkpoint, out)`.

Each family of sources lives in its own module of this package (`llamagen`, `titok`,
`maskgit`, `taming`, ...) and lists what it converts in a module-level `SOURCES` tuple of
`common.Source`. The export written is the one `jaxtok export` writes (config.json and
variables/), so `jaxtok.load`, `jaxtok reconstruct`, `jaxtok tokenize` and `jaxtok sample` use
a converted model as they use a trained one. PyTorch files are read without torch
(`jaxtok.weights`).
"""

import importlib
import json

from jaxtok.convert.common import Source

# The modules of this package that hold converters, in the order `jaxtok convert --list` shows.
FAMILIES = ("llamagen", "titok", "maskgit", "taming", "var", "rar", "mar", "mar_vae")


def sources() -> dict[str, Source]:
  """Every source jaxtok converts, by name."""
  found = {}
  for family in FAMILIES:
    try:
      module = importlib.import_module(f"jaxtok.convert.{family}")
    except ModuleNotFoundError as e:
      if e.name != f"jaxtok.convert.{family}":
        raise
      continue  # a family not written yet
    for source in module.SOURCES:
      found[source.name] = source
  return found


def convert(source: str, checkpoint: str, out: str, **options) -> str:
  """Converts the published `checkpoint` file of `source` (see `sources()`) into a jaxtok
  export directory `out`; returns its path. Options are the source's own (e.g. use_ema)."""
  known = sources()
  if source not in known:
    raise ValueError(f"source must be one of {sorted(known)}; got {source!r} "
                     f"(`jaxtok convert --list` describes them)")
  return known[source].run(checkpoint, out, **options)


def parse_options(items: list[str] | None) -> dict:
  """`--option NAME=VALUE` strings -> {name: value}, values read as JSON where they parse
  (numbers, true / false, lists), else kept as strings (paths)."""
  options = {}
  for item in items or ():
    name, sep, text = item.partition("=")
    if not sep or not name:
      raise ValueError(f"--option must be NAME=VALUE (e.g. image_size=384); got {item!r}")
    try:
      options[name] = json.loads(text)
    except json.JSONDecodeError:
      options[name] = text
  return options


def describe() -> str:
  """The table `jaxtok convert --list` prints: source, expected files, what it is."""
  rows = [(s.name, ", ".join(s.files),
           s.description + (f" [options: {', '.join(s.options)}]" if s.options else ""))
          for s in sources().values()]
  width = max((len(r[0]) for r in rows), default=6)
  files = max((len(r[1]) for r in rows), default=5)
  lines = [f"{'source':<{width}}  {'files':<{files}}  model"]
  lines += [f"{n:<{width}}  {f:<{files}}  {d}" for n, f, d in rows]
  return "\n".join(lines)


__all__ = ["FAMILIES", "Source", "convert", "describe", "parse_options", "sources"]
