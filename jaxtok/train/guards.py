"""Guards around the training loop: non-finite steps are skipped, stop signals end a run cleanly.

Skipping. A step whose loss or gradient is not finite must leave no trace in the model: the
new state is *selected* against the old one with `lax.cond` (multiplying an update by zero
would still turn inf * 0 into NaN). The step counter and the random key advance anyway, so the
data stream and the random draws stay aligned with the step number; the state counts the
skipped steps in total and in a row. The host reads the in-a-row count and aborts the run after
`max_in_a_row` consecutive skips, naming the step.

Stopping. `StopSignal` turns SIGTERM (preemption, `kill`, job schedulers) and SIGINT (Ctrl-C)
into a flag the loop checks once per step: the loop then writes a checkpoint and returns, and
the next run resumes at the following step. A second SIGINT raises KeyboardInterrupt at once.

Locking. `WorkdirLock` keeps a second process from training or evaluating in the same workdir
(it would delete the first one's checkpoints and interleave its metric rows): an exclusive
`flock` on `<workdir>/.lock`, whose line names the holder. The kernel drops the lock when its
process dies, however it dies, so a killed run never blocks the next one.
"""

import contextlib
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

PyTree = Any


class NonFiniteError(RuntimeError):
  """Too many consecutive training steps had a non-finite loss or gradient."""

  def __init__(self, message: str, *, step: int, in_a_row: int):
    super().__init__(message)
    self.step = step  # the last step read, the in_a_row-th skipped one in a row
    self.in_a_row = in_a_row


class WorkdirLockedError(RuntimeError):
  """Another process holds the workdir's lock (trains or evaluates there)."""


def all_finite(tree: PyTree) -> jax.Array:
  """True when every floating-point leaf of `tree` is finite everywhere (bool scalar)."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def select(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` if the scalar `ok` is true, else `old` (no arithmetic on the values).

  One `lax.cond` over the whole tree rather than a `jnp.where` per leaf: the same result, but
  XLA compiles a train step's few hundred per-leaf selects about twice as slowly (10 s vs 4.5 s
  for the tiny test model on a CPU).
  """
  return jax.lax.cond(ok, lambda n, o: n, lambda n, o: o, new, old)


def guard_step(ok: jax.Array, new_state, old_state, *, advance=("step", "rng")):
  """The state after a step: `new_state` if ok, else `old_state` with only the fields named in
  `advance` taken from `new_state`; `skipped` and `skipped_in_a_row` are updated either way.

  The states are `flax.struct` dataclasses with int32 `skipped` and `skipped_in_a_row` fields.
  """
  kept = select(ok, new_state, old_state)
  kept = kept.replace(**{name: getattr(new_state, name) for name in advance})
  bad = jnp.logical_not(ok).astype(jnp.int32)
  return kept.replace(skipped=old_state.skipped + bad,
                      skipped_in_a_row=(old_state.skipped_in_a_row + 1) * bad)


class SkipMonitor:
  """Host-side watch on the skip counters: logs each skipped step, aborts after K in a row."""

  def __init__(self, max_in_a_row: int, skipped_total: int = 0):
    if max_in_a_row < 1:
      raise ValueError(f"max_in_a_row must be >= 1; got {max_in_a_row}")
    self.max_in_a_row = max_in_a_row
    self.last_total = skipped_total  # the count the run starts (or resumes) with

  def update(self, step: int, skipped_total: int, skipped_in_a_row: int) -> None:
    """Reports the counters after `step`; raises NonFiniteError after K skips in a row."""
    if skipped_total > self.last_total:
      log.warning("step %d: non-finite loss or gradient, update skipped (%d skipped in total, "
                  "%d in a row)", step, skipped_total, skipped_in_a_row)
    self.last_total = skipped_total
    if skipped_in_a_row >= self.max_in_a_row:
      raise NonFiniteError(
          f"training stopped at step {step}: {skipped_in_a_row} consecutive steps had a "
          f"non-finite loss or gradient (train.max_skips_in_a_row={self.max_in_a_row})",
          step=step, in_a_row=skipped_in_a_row)


def checkpoint_note(error: NonFiniteError, newest_step: int | None, directory: str) -> str:
  """What the checkpoints of an aborted run hold, for the end of the abort's message: the
  newest committed step, and whether its parameters predate the skipped steps."""
  last_update = error.step - error.in_a_row  # skipped steps keep the state of this step
  advice = "Lower the learning rate, enable gradient clipping or check the data"
  if newest_step is None:
    return (f"no checkpoint was written before the abort, so a rerun starts from scratch. "
            f"{advice}")
  where = f"the newest checkpoint is step {newest_step} in {directory}"
  if newest_step <= last_update:
    return f"{where}, from before the non-finite steps. {advice}, then rerun to resume from it"
  held = ("the initial parameters" if last_update == 0
          else f"the parameters of step {last_update}")
  return (f"{where}; it holds {held} (skipped steps leave them unchanged), and resuming from "
          f"it runs into the same steps again unless you change something. {advice}")


class WorkdirLock:
  """Context manager: an exclusive lock on `workdir` for one process, released on exit.

  Raises WorkdirLockedError at once, naming the holder (pid, host, since, command), when
  another process holds it. `create`: make the workdir if it does not exist (training).
  """

  FILE = ".lock"

  def __init__(self, workdir: str, *, create: bool = True):
    self.workdir = os.path.abspath(workdir)
    self.create = create
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    if os.path.exists(self.workdir) and not os.path.isdir(self.workdir):
      raise NotADirectoryError(f"workdir {self.workdir} is a file, not a directory")
    if self.create:
      os.makedirs(self.workdir, exist_ok=True)
    elif not os.path.isdir(self.workdir):
      raise FileNotFoundError(f"workdir {self.workdir} does not exist")
    fd = os.open(os.path.join(self.workdir, self.FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip().split(" ", 3)
      os.close(fd)
      who = (f"pid {holder[0]} on {holder[1]} since {holder[2]} ({holder[3]})"
             if len(holder) == 4 else "another process")
      raise WorkdirLockedError(f"workdir {self.workdir} is in use by {who}; wait for it to end "
                               f"or stop it") from None
    command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:300]
    line = (f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')} "
            f"{command}\n")
    os.ftruncate(fd, 0)
    os.pwrite(fd, line.encode(), 0)
    self._fd = fd
    return self

  def __exit__(self, *exc) -> None:
    if self._fd is not None:
      os.ftruncate(self._fd, 0)  # the file stays: removing it would race with a next opener
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


def workdir_lock(workdir: str, *, create: bool = True):
  """`WorkdirLock` on the writing process (process 0) only; a no-op on the others, which
  share its workdir (call after jax.distributed is initialized)."""
  if jax.process_index() != 0:
    return contextlib.nullcontext()
  return WorkdirLock(workdir, create=create)


class StopSignal:
  """Context manager: SIGTERM / SIGINT set `self.requested` instead of killing the process.

  Installs handlers only in the main thread (Python allows no other); elsewhere it is inert.
  The previous handlers come back on exit.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name = None
    self._previous = {}

  def _handle(self, signum, frame):
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
    self.requested = True
    self.signal_name = signal.Signals(signum).name
    log.warning("received %s: saving a checkpoint after the current step, then stopping",
                self.signal_name)

  def __enter__(self) -> "StopSignal":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()


def any_process(flag: bool) -> bool:
  """True if `flag` is set on any process (a signal may reach only some hosts)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))
