"""Orbax checkpoints holding everything needed to resume a run exactly.

One checkpoint step is a directory `<workdir>/checkpoints/<step>/` with three items:
  state   the whole training state (StandardSave of its state dict: params, optimizer
          states, EMA, quantizer and discriminator collections, step, RNG, skip counters);
  data    the Grain iterator's position (grain.checkpoint.CheckpointSave);
  config  the run's config as JSON, for the record and for mismatch messages.

Saves are asynchronous: Orbax copies the arrays off the devices, then writes in a background
thread while training goes on. A save interrupted by any crash stays in a
`<step>.orbax-checkpoint-tmp*` directory that restore ignores and the next run deletes, so the
latest *committed* step always restores. A state with a NaN or inf anywhere is never written.

A committed step can still be damaged afterwards (a full disk, a copy cut short, a deleted file):
its restore raises CheckpointCorruptError, and `restore_newest` then falls back to the step
before, saying so. Readers (evaluation, export) open the directory read-only: they create
nothing and never delete the unfinished save of a run that is training meanwhile.
"""

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any, TypeVar

import flax
import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxtok.train import guards

log = logging.getLogger(__name__)


class _QuietReadOnly(logging.Filter):
  """Drops Orbax's warning on every read-only open: reading is all a reader means to do."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Given directory is read only")


logging.getLogger("absl").addFilter(_QuietReadOnly())

PyTree = Any
T = TypeVar("T")
_finite = jax.jit(guards.all_finite)


class CheckpointMismatchError(ValueError):
  """A checkpoint's arrays do not match the shapes the current config builds."""


class CheckpointCorruptError(RuntimeError):
  """A committed checkpoint step cannot be read back (a file of it is missing or cut short)."""


def _root_cause(error: BaseException) -> str:
  """The first line of the innermost cause: the file and what is wrong with it, usually."""
  while error.__cause__ is not None or error.__context__ is not None:
    error = error.__cause__ or error.__context__
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return line if len(line) <= 300 else line[:300] + " ..."


def _path_str(path) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def _shapes(tree: PyTree) -> dict[str, tuple[tuple[int, ...], str]]:
  is_leaf = lambda x: hasattr(x, "shape") and hasattr(x, "dtype")
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {_path_str(p): (tuple(x.shape), str(np.dtype(x.dtype))) for p, x in flat}


def _flat_config(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat_config(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def describe_mismatch(saved: PyTree, expected: PyTree, *, per_group: int = 5) -> list[str]:
  """Lines naming the paths whose presence, shape or dtype differs (saved vs expected), at
  most `per_group` per top-level entry, in the expected tree's order."""
  saved, expected = _shapes(saved), _shapes(expected)
  paths = list(expected) + [p for p in saved if p not in expected]
  groups: dict[str, list[str]] = {}
  for path in paths:
    if path not in expected:
      line = f"  {path}: in the checkpoint {saved[path][0]}, not built by this config"
    elif path not in saved:
      line = f"  {path}: built by this config {expected[path][0]}, not in the checkpoint"
    elif saved[path] != expected[path]:
      (s_shape, s_dtype), (e_shape, e_dtype) = saved[path], expected[path]
      line = f"  {path}: checkpoint {s_shape} {s_dtype}, this config {e_shape} {e_dtype}"
    else:
      continue
    groups.setdefault(path.split("/")[0], []).append(line)
  lines = []
  for group, found in groups.items():
    lines += found[:per_group]
    if len(found) > per_group:
      lines.append(f"  ... and {len(found) - per_group} more under {group}/")
  return lines


def config_differences(saved: dict | None, current: dict | None, *, limit: int = 10) -> list[str]:
  """`key: saved -> current` for config entries that differ (both as JSON-like dicts)."""
  if saved is None or current is None:
    return []
  a, b = _flat_config(saved), _flat_config(current)
  lines = [f"  {k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
           for k in sorted(set(a) | set(b)) if a.get(k, "<absent>") != b.get(k, "<absent>")]
  return lines[:limit] + ([f"  ... and {len(lines) - limit} more"] if len(lines) > limit else [])


def config_to_json(config) -> dict:
  """A ConfigDict (or dict) as a plain JSON-compatible dict."""
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


def config_from_json(saved: dict):
  """A saved config back as a ConfigDict (JSON lists as the tuples configs use)."""

  def tuples(x):
    if isinstance(x, dict):
      return {k: tuples(v) for k, v in x.items()}
    return tuple(tuples(v) for v in x) if isinstance(x, list) else x

  return ml_collections.ConfigDict(tuples(saved))


class Checkpointer:
  """A CheckpointManager for `(state, data iterator, config)` steps in `directory`."""

  def __init__(self, directory: str, *, max_to_keep: int | None = 3, async_save: bool = True,
               read_only: bool = False):
    """`read_only`: for readers of another run's checkpoints; `directory` must exist, nothing is
    created, saved or deleted (in particular not the unfinished save of a running training)."""
    self.directory = os.path.abspath(directory)
    if read_only and not os.path.isdir(self.directory):
      raise FileNotFoundError(f"no checkpoint under {self.directory}: train first")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else max_to_keep, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1,
        enable_async_checkpointing=async_save)
    handlers = {"state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "config": ocp.JsonCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self.bad_steps: list[int] = []  # steps the last restore_newest passed over

  def latest_step(self) -> int | None:
    """The newest committed step, or None in an empty directory."""
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state, *, data_iterator=None, config=None) -> bool:
    """Starts an (async) save of `state` at `step`; returns False, writing nothing, when the
    state holds a non-finite value."""
    if not bool(jax.device_get(_finite(state))):
      log.error("step %d: the training state holds NaN or inf; checkpoint NOT written", step)
      return False
    items = {"state": ocp.args.StandardSave(flax.serialization.to_state_dict(state))}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items["config"] = ocp.args.JsonSave(config_to_json(config))
    return self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)

  def saved_config(self, step: int) -> dict | None:
    try:
      return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
          "config"]
    except Exception:  # pylint: disable=broad-except  # an old or foreign step: no config item
      return None

  def _state_metadata(self, step: int):
    try:
      saved = self.manager.item_metadata(step).get("state")
    except Exception as e:  # pylint: disable=broad-except  # unreadable metadata files
      raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory} cannot be read: "
                                   f"{_root_cause(e)}") from e
    if not saved:  # state/ or its _METADATA is gone: every array would look "missing"
      raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory} cannot be read: "
                                   f"the metadata of its state is missing")
    return saved

  def check_compatible(self, step: int, abstract_state, *, config=None) -> None:
    """Raises CheckpointMismatchError naming every path whose shape or dtype differs."""
    saved = self._state_metadata(step)
    expected = flax.serialization.to_state_dict(abstract_state)
    lines = describe_mismatch(saved, expected)
    if not lines:
      return
    message = [f"checkpoint step {step} in {self.directory} does not fit the model this config "
               f"builds; arrays that differ:", *lines]
    diffs = config_differences(self.saved_config(step),
                               None if config is None else config_to_json(config))
    if diffs:
      message += ["config entries that differ from the checkpoint's (saved -> current):", *diffs]
    message.append("Use the checkpoint's config, or a fresh workdir for a new config.")
    raise CheckpointMismatchError("\n".join(message))

  def restore(self, step: int, abstract_state, *, data_iterator=None, config=None):
    """The state saved at `step`, placed as `abstract_state`'s leaves say (ShapeDtypeStructs
    with shardings); also rewinds `data_iterator` to its saved position when given."""
    self.check_compatible(step, abstract_state, config=config)
    target = flax.serialization.to_state_dict(abstract_state)
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._read(step, items)
    return flax.serialization.from_state_dict(abstract_state, restored["state"])

  def restore_raw(self, step: int) -> dict:
    """The state dict saved at `step` as host arrays, without a target (for exports)."""
    self._state_metadata(step)
    return self._read(step, {"state": ocp.args.StandardRestore()})["state"]

  def _read(self, step: int, items: dict):
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except  # Orbax / TensorStore read errors
      raise CheckpointCorruptError(f"checkpoint step {step} in {self.directory} cannot be read: "
                                   f"{_root_cause(e)}") from e

  def restore_newest(self, restore: Callable[[int], T], *, step: int | None = None
                     ) -> tuple[T, int]:
    """(restore(s), s) for `step`, or else for the newest step s that reads back.

    A step whose `restore` raises CheckpointCorruptError is passed over for the one before,
    with a warning naming both; `bad_steps` lists the steps passed over. Raises
    FileNotFoundError when there is no step, CheckpointCorruptError when none reads back.
    """
    self.bad_steps = []
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint under {self.directory}: train first")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(f"no checkpoint step {step} in {self.directory}; steps there: "
                                f"{', '.join(map(str, sorted(steps)))}")
      steps = [step]
    errors = []
    for s in steps:
      try:
        result = restore(s)
      except CheckpointCorruptError as e:
        errors.append(str(e))
        self.bad_steps.append(s)
        continue
      if self.bad_steps:
        rest = self.bad_steps[1:]
        also = f" (nor can step{'s' * (len(rest) > 1)} {', '.join(map(str, rest))})" if rest else ""
        log.warning("%s%s; using step %d instead", errors[0], also, s)
      return result, s
    if step is not None:
      raise CheckpointCorruptError(errors[0])
    raise CheckpointCorruptError(
        f"no intact checkpoint in {self.directory}: steps {', '.join(map(str, steps))} cannot be "
        f"read ({errors[0]}); move the directory away to start over")

  def set_aside(self, steps: list[int], destination: str) -> list[str]:
    """Moves the (damaged) `steps` into `destination`, out of the manager's sight, so that a
    resumed run can write those steps anew; returns where each went."""
    moved = []
    if jax.process_index() == 0:
      os.makedirs(destination, exist_ok=True)
      for step in steps:
        target = os.path.join(destination, str(step))
        suffix = 1
        while os.path.exists(target):
          target, suffix = os.path.join(destination, f"{step}.{suffix}"), suffix + 1
        shutil.move(os.path.join(self.directory, str(step)), target)
        moved.append(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("jaxtok_checkpoint_set_aside")
    self.manager.reload()
    return moved

  def wait(self) -> None:
    """Blocks until every started save is committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
