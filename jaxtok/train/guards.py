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
"""

import logging
import signal
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger(__name__)

PyTree = Any


class NonFiniteError(RuntimeError):
  """Too many consecutive training steps had a non-finite loss or gradient."""


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
          f"non-finite loss or gradient (train.max_skips_in_a_row={self.max_in_a_row}); "
          f"the last checkpoint holds the last finite state. Lower the learning rate, enable "
          f"gradient clipping or check the data")


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
