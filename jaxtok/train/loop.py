"""The one resumable training loop every trainer runs.

A trainer builds its models, its data iterator and a pure step function, then hands them to
`run`: shapes via `jax.eval_shape` -> shardings on the mesh -> jit init with those
out_shardings, or restore of the newest checkpoint (state and data position) -> the loop.
The loop holds the workdir's lock throughout, reads the skip counters one step late (the device
runs ahead meanwhile), logs, evaluates and checkpoints on the config's cadence, turns SIGTERM /
SIGINT into a final checkpoint, and always saves the last step.
"""

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax

from jaxtok.train import checkpoint, guards, sharding
from jaxtok.train import metrics as metric_io
from jaxtok.train import state as state_lib

log = logging.getLogger(__name__)

PyTree = Any
# (state, step, writer) -> metrics of one evaluation pass.
EvalFn = Callable[[PyTree, int, metric_io.MetricWriter], dict[str, float]]


def make_mesh(config, batch_sizes: Sequence[str] = ("train.batch_size",)) -> jax.sharding.Mesh:
  """Joins the distributed run (if any) and builds config.mesh; checks that each named batch
  size divides over the mesh's data axes."""
  sharding.maybe_initialize_distributed()
  mesh = sharding.make_mesh(config.mesh.shape)
  for name in batch_sizes:
    section, field = name.split(".")
    sharding.check_batch_size(config[section][field], mesh, name=name)
  return mesh


def layout(init: Callable[[jax.Array], PyTree], seed: int, mesh):
  """Shapes via eval_shape -> shardings; returns (init key, shardings, abstract state)."""
  key = state_lib.make_key(seed)
  boxed = jax.eval_shape(init, key)
  shardings = sharding.state_shardings(boxed, mesh)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nn.meta.unbox(boxed), shardings)
  return key, shardings, abstract


def jit_init(init: Callable[[jax.Array], PyTree], shardings):
  """jit(key -> fresh state, unboxed) placed on `shardings`."""
  return jax.jit(lambda k: nn.meta.unbox(init(k)), out_shardings=shardings)


def jit_step(step: Callable, mesh, shardings, num_constants: int = 0):
  """`step(state, batch, *constants) -> (state, metrics)` jitted for `mesh`: state donated,
  batch split over data x fsdp, constants (e.g. LPIPS weights) and metrics replicated."""
  repl = sharding.replicated(mesh)
  return jax.jit(step, donate_argnums=(0,),
                 in_shardings=(shardings, sharding.batch_sharding(mesh), *[repl] * num_constants),
                 out_shardings=(shardings, repl))


def checkpointer(config, workdir: str) -> checkpoint.Checkpointer:
  return checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 max_to_keep=config.checkpoint.max_to_keep,
                                 async_save=config.checkpoint.async_save)


def reader(workdir: str) -> checkpoint.Checkpointer:
  """`workdir`'s checkpoints opened read-only (evaluation, export): creates nothing, and
  raises FileNotFoundError when there are none."""
  return checkpoint.Checkpointer(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                 read_only=True)


def warn_config_differences(ckpt: checkpoint.Checkpointer, step: int, config, what: str
                            ) -> list[str]:
  """Logs one warning line naming the config entries that differ from those saved at `step`
  (saved -> current); returns them."""
  diffs = checkpoint.config_differences(ckpt.saved_config(step), checkpoint.config_to_json(config))
  if diffs:
    log.warning("%s step %d of %s with a config that differs from the one saved with it "
                "(saved -> now): %s", what, step, ckpt.directory,
                "; ".join(d.strip() for d in diffs))
  return diffs


def start_or_resume(config, workdir: str, init, mesh, batches: Iterator):
  """(checkpointer, state, start step, state shardings): the newest intact checkpoint of
  `workdir` restored (rewinding `batches` to its position), or a fresh state at step 0.

  Newer steps that cannot be read are moved to `<workdir>/corrupt_checkpoints/`, so that
  the run can write those steps anew.
  """
  key, shardings, abstract = layout(init, config.seed, mesh)
  ckpt = checkpointer(config, workdir)
  if ckpt.latest_step() is None:
    return ckpt, jit_init(init, shardings)(key), 0, shardings
  try:
    state, start = ckpt.restore_newest(
        lambda s: ckpt.restore(s, abstract, data_iterator=batches, config=config))
    if ckpt.bad_steps:
      moved = ckpt.set_aside(ckpt.bad_steps, os.path.join(workdir, "corrupt_checkpoints"))
      if moved:
        log.warning("moved the unreadable checkpoint step(s) to %s", ", ".join(moved))
    warn_config_differences(ckpt, start, config, "resuming from")
  except BaseException:
    ckpt.close()
    raise
  return ckpt, state, start, shardings


def _non_finite(error: guards.NonFiniteError, ckpt: checkpoint.Checkpointer
                ) -> guards.NonFiniteError:
  """`error` completed with what the checkpoints hold now (the saves started are waited for)."""
  ckpt.wait()
  note = guards.checkpoint_note(error, ckpt.latest_step(), ckpt.directory)
  return guards.NonFiniteError(f"{error}; {note}", step=error.step, in_a_row=error.in_a_row)


def run(config, workdir: str, *, mesh, init: Callable[[jax.Array], PyTree], step: Callable,
        batches: Iterator, constants: Sequence[PyTree] = (), evaluate: EvalFn | None = None,
        throughput: tuple[str, int] = ("examples_per_sec", 0), report: Sequence[str] = (),
        stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes, from the newest checkpoint in `workdir`) until `train.steps`.

  Args:
    config: the run's ConfigDict; the loop reads seed, train.{steps, log_every,
      max_skips_in_a_row}, eval.every_steps (if there is an eval section), checkpoint.*.
    workdir: checkpoints/, metrics.jsonl and tensorboard/ go here.
    mesh: from `make_mesh`.
    init: key -> fresh state (parameters in their nn.Partitioned boxes).
    step: (state, batch, *constants) -> (state, metrics); metrics hold the int32 scalars
      "skipped_total" and "skipped_in_a_row" of `guards.guard_step`.
    batches: the checkpointable Grain iterator of this process's batches.
    constants: replicated step arguments that never change (e.g. LPIPS weights).
    evaluate: (state, step, writer) -> metrics, run every eval.every_steps and at the end.
    throughput: (metric name, units per step), e.g. ("tokens_per_sec", batch * tokens).
    report: train metrics whose last logged values join the result.
    stop_after: stop (with a checkpoint) once this step is reached; the learning-rate
      schedule still runs to `train.steps`.

  Returns:
    {"step", "stopped_by": signal name or None, **last evaluation, **reported metrics}.
  Raises:
    guards.NonFiniteError: `train.max_skips_in_a_row` consecutive non-finite steps.
    guards.WorkdirLockedError: another process trains or evaluates in `workdir`.
    checkpoint.CheckpointMismatchError: the workdir's checkpoint does not fit this config.
    checkpoint.CheckpointCorruptError: no checkpoint step of `workdir` reads back.
  """
  with guards.workdir_lock(workdir):
    return _run(config, workdir, mesh=mesh, init=init, step=step, batches=batches,
                constants=constants, evaluate=evaluate, throughput=throughput, report=report,
                stop_after=stop_after)


def _run(config, workdir, *, mesh, init, step, batches, constants, evaluate, throughput, report,
         stop_after):
  ckpt, state, start, shardings = start_or_resume(config, workdir, init, mesh, batches)
  train_step = jit_step(step, mesh, shardings, len(constants))
  total = config.train.steps
  end = total if stop_after is None else min(total, stop_after)
  eval_every = config.eval.every_steps if evaluate is not None else 0
  writer = metric_io.MetricWriter(workdir, total_steps=total, initial_step=start,
                                  enabled=jax.process_index() == 0)
  monitor = guards.SkipMonitor(config.train.max_skips_in_a_row, int(state.skipped))
  result, step_no, stop = {}, start, None
  try:
    with guards.StopSignal() as stop:
      resumed = f"resumed from step {start} of {ckpt.directory}" if start else "started"
      writer.print(f"training: {resumed}; running to step {end} of {total}")
      pending, t_log, step_log = None, time.time(), start
      while step_no < end:
        if step_no == start:
          writer.print("compiling the train step ...")
        state, step_metrics = train_step(state, sharding.global_batch(next(batches), mesh),
                                         *constants)
        step_no += 1
        if step_no == start + 1:  # compile (or a cache load) as its own phase, off the bar
          jax.block_until_ready(step_metrics)
          writer.print(f"compiled the train step and ran step {step_no} in "
                       f"{time.time() - t_log:.1f} s")
          writer.start_progress(step_no)
        else:
          writer.advance()
        if pending is not None:  # read one step late: the device runs ahead meanwhile
          monitor.update(pending[0], *jax.device_get(pending[1]))
        pending = (step_no, (step_metrics["skipped_total"], step_metrics["skipped_in_a_row"]))
        if step_no % config.train.log_every == 0 or step_no == end:
          values = jax.device_get(step_metrics)
          now = time.time()
          values[throughput[0]] = (step_no - step_log) * throughput[1] / (now - t_log)
          writer.write(step_no, values)
          result.update({k: float(values[k]) for k in report})
          t_log, step_log = now, step_no
        elif step_no == start + 1:  # later throughputs leave the compile time out
          t_log, step_log = time.time(), step_no
        if eval_every > 0 and (step_no % eval_every == 0 or step_no == total):
          evaluation = evaluate(state, step_no, writer)
          writer.write(step_no, evaluation, split="eval")
          result.update(evaluation)
        stopping = guards.any_process(stop.requested)
        if step_no % config.checkpoint.every_steps == 0 or step_no == end or stopping:
          ckpt.save(step_no, state, data_iterator=batches, config=config)
        if stopping:
          writer.print(f"stopped by {stop.signal_name} at step {step_no}; checkpoint saved")
          break
      if pending is not None:
        monitor.update(pending[0], *jax.device_get(pending[1]))
  except guards.NonFiniteError as e:
    raise _non_finite(e, ckpt) from None
  finally:
    ckpt.close()
    writer.close()
  return {"step": step_no, "stopped_by": stop.signal_name if stop else None, **result}
