"""Named presets and one constructor for every model: `Model.from_preset(name, **overrides)`.

A preset is a mapping of the class's own fields kept in its `PRESETS` table, so configs, tests
and users build any model the same way, and a typo in a table or an override is an error that
names the field instead of a silently ignored keyword.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

_NOT_FIELDS = ("parent", "name")  # Linen's own dataclass fields


def _tuples(value):
  """Lists become tuples, recursively (Linen fields must be hashable); other values as given."""
  if isinstance(value, list) or type(value) is tuple:  # pylint: disable=unidiomatic-typecheck
    return tuple(_tuples(v) for v in value)
  return value


def _fields(cls) -> dict[str, dataclasses.Field]:
  return {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in _NOT_FIELDS}


def _default(field: dataclasses.Field):
  if field.default is not dataclasses.MISSING:
    return field.default
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return dataclasses.MISSING


def _replace_entries(owner: str, key: str, current, entries: Mapping):
  """dataclasses.replace(current, **entries), refusing entries it does not have."""
  known = sorted(_fields(type(current)))
  unknown = sorted(set(entries) - set(known))
  if unknown:
    raise ValueError(f"{owner}.{key} ({type(current).__name__}) has no entry "
                     f"{', '.join(map(repr, unknown))}; its entries: {known}")
  return dataclasses.replace(current, **{k: _tuples(v) for k, v in entries.items()})


def _merge(cls, base: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
  """`base` updated by `fields`; a mapping given for a dataclass-valued field replaces that
  dataclass's entries on top of the value in `base` (else the field's default)."""
  known = _fields(cls)
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise ValueError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}; its "
                     f"fields: {sorted(known)}")
  merged = dict(base)
  for key, value in fields.items():
    current = merged[key] if key in merged else _default(known[key])
    if (isinstance(value, Mapping) and dataclasses.is_dataclass(current)
        and not isinstance(current, type)):
      merged[key] = _replace_entries(cls.__name__, key, current, value)
    else:
      merged[key] = _tuples(value)
  return merged


def _build(cls, fields: dict[str, Any], preset: str | None = None):
  missing = [k for k, f in _fields(cls).items()
             if k not in fields and _default(f) is dataclasses.MISSING]
  if missing:
    how = (f"{cls.__name__}.from_preset({preset!r}, {missing[0]}=...)" if preset
           else f"{cls.__name__}({missing[0]}=...)")
    raise ValueError(f"{cls.__name__} needs {', '.join(missing)} (no default): pass it, e.g. "
                     f"{how}")
  return cls(**fields)


def construct(cls, fields: Mapping[str, Any]):
  """The Linen module `cls(**fields)`, checked: each key must be a field of `cls`.

  Lists become tuples. A mapping given for a dataclass-valued field (VQGAN's `config`)
  replaces the named entries of the field's default, e.g. `{"config": {"ch": 32}}`. Unknown
  fields or entries raise a ValueError naming them and listing the known ones.
  """
  return _build(cls, _merge(cls, {}, fields))


class Presets:
  """Mixin giving a model class `from_preset`; the class lists its presets in `PRESETS`."""

  # name -> fields of the class (a mapping for a dataclass-valued field, or the dataclass).
  PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

  @classmethod
  def from_preset(cls, name: str, **overrides):
    """`PRESETS[name]` with `overrides` on top, built by `construct`'s rules: a mapping for a
    dataclass-valued field updates the preset's value, e.g.
    `VQGAN.from_preset("llamagen-vq16", quantizer=q, config={"ch": 32})`."""
    if name not in cls.PRESETS:
      raise ValueError(f"unknown {cls.__name__} preset {name!r}; known: {sorted(cls.PRESETS)}")
    fields = _merge(cls, _merge(cls, {}, cls.PRESETS[name]), overrides)
    return _build(cls, fields, name)
