"""Exact resume across processes: a run split by a restart, a SIGTERM / SIGINT, or kill -9
during asynchronous saves ends bit for bit where the uninterrupted run ends, and so does one
resumed past a damaged checkpoint; a checkpoint of another config is refused with the paths and
shapes that differ; a second run on a workdir in use is refused at once."""

import os
import re
import shutil
import signal
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxtok.configs.demo import tokenizer as demo_config
from jaxtok.train import checkpoint, tokenizer_trainer
from jaxtok.train.metrics import read_jsonl
from tests.train.conftest import REFERENCE, finish, run_tiny, start_tiny

NO_EVAL = {**REFERENCE, "eval.every_steps": 0}


def _state_leaves(workdir, step: int) -> dict[str, np.ndarray]:
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state"))
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def assert_same_final_state(workdir, reference_workdir, step: int = 6) -> None:
  got, want = _state_leaves(workdir, step), _state_leaves(reference_workdir, step)
  assert got.keys() == want.keys()
  differing = [k for k in want if not np.array_equal(got[k], want[k])]
  assert not differing, f"not bitwise equal: {differing[:5]}"
  # Everything the issue names is among the compared arrays.
  for part in ("'params'", "'opt_state'", "'ema_params'", "'quantizer_state'", "'d_params'",
               "'d_opt_state'", "'d_state'", "'rng'"):
    assert any(part in k for k in want), part


def _train_rows(workdir) -> list[dict]:
  rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rows]


def test_split_run_equals_uninterrupted_run(reference_run, tmp_path):
  reference, _ = reference_run
  first, _ = run_tiny(tmp_path, NO_EVAL, stop_after=3)
  assert first["step"] == 3 and sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "3"]
  second, err = run_tiny(tmp_path, NO_EVAL)  # a new process
  assert "resumed from step 3" in err and second["step"] == 6
  assert_same_final_state(tmp_path, reference)
  # The logged losses of the split run are those of the uninterrupted one, step for step.
  assert _train_rows(tmp_path) == _train_rows(reference)
  assert [r["step"] for r in _train_rows(tmp_path)] == [1, 2, 3, 4, 5, 6]


def _wait_for_line(proc, pattern: str, timeout: float = 120) -> list[str]:
  """Reads proc.stderr until a line contains `pattern`; returns the lines read."""
  lines, deadline = [], time.time() + timeout
  while time.time() < deadline:
    line = proc.stderr.readline()
    if not line:
      break
    lines.append(line)
    if pattern in line:
      return lines
  raise AssertionError(f"no {pattern!r} in the output:\n{''.join(lines)[-3000:]}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_exits_cleanly_and_resumes_at_the_next_step(signum, reference_run,
                                                                 tmp_path):
  reference, _ = reference_run
  proc = start_tiny(tmp_path, NO_EVAL)
  _wait_for_line(proc, "training: started")
  proc.send_signal(signum)
  result, err = finish(proc)
  assert proc.returncode == 0, err[-3000:]
  assert result["stopped_by"] == signal.Signals(signum).name
  stopped = result["step"]
  assert 1 <= stopped < 6 and f"stopped by {result['stopped_by']} at step {stopped}" in err
  assert max(int(s) for s in os.listdir(tmp_path / "checkpoints")) == stopped
  if signum == signal.SIGINT:  # the cheaper check: the next run starts at the next step
    resumed, err = run_tiny(tmp_path, NO_EVAL, stop_after=stopped + 1)
    assert f"resumed from step {stopped}" in err and resumed["step"] == stopped + 1
    assert [r["step"] for r in _train_rows(tmp_path)] == list(range(1, stopped + 2))
  else:
    resumed, err = run_tiny(tmp_path, NO_EVAL)
    assert f"resumed from step {stopped}" in err
    assert_same_final_state(tmp_path, reference)
    assert _train_rows(tmp_path) == _train_rows(reference)


def _committed(workdir) -> list[int]:
  names = os.listdir(workdir / "checkpoints") if (workdir / "checkpoints").exists() else []
  return sorted(int(n) for n in names if n.isdigit())


def _kill_during_save(proc, workdir, delay: float) -> None:
  """SIGKILLs `proc` `delay` seconds after an unfinished (tmp) checkpoint directory appears."""
  ckpt_dir, deadline = workdir / "checkpoints", time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if ckpt_dir.exists() and any("tmp" in n for n in os.listdir(ckpt_dir)):
      time.sleep(delay)
      proc.kill()
      return
    time.sleep(0.002)
  raise AssertionError("the run ended before a save could be interrupted")


def test_kill_during_async_save_always_restores_the_last_committed_step(reference_run,
                                                                         tmp_path):
  reference, _ = reference_run
  every_step = {**NO_EVAL, "checkpoint.every_steps": 1}
  for delay in (0.0, 0.05, 0.2):  # early in the write, midway, near the commit
    before = _committed(tmp_path)
    proc = start_tiny(tmp_path, every_step)
    drain = threading.Thread(target=proc.communicate, daemon=True)  # keep pipes flowing
    drain.start()
    _kill_during_save(proc, tmp_path, delay)
    drain.join(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    after = _committed(tmp_path)
    assert after[-1:] >= before[-1:]  # nothing committed was lost
  latest = _committed(tmp_path)[-1] if _committed(tmp_path) else 0
  result, err = run_tiny(tmp_path, every_step)
  if latest:
    assert re.search(rf"resumed from step {latest}\b", err), err[-2000:]
  assert result["step"] == 6
  assert_same_final_state(tmp_path, reference)


def test_restoring_with_another_config_names_the_mismatched_arrays(reference_run):
  reference, _ = reference_run
  config = demo_config.get_config("tiny")
  config.quantizer.codebook_size = 64  # reference: 32
  config.model.config.ch = 64  # reference: 32
  with pytest.raises(checkpoint.CheckpointMismatchError) as error:
    tokenizer_trainer.train(config, str(reference))
  message = str(error.value)
  assert "quantizer_state/quantizer/codebook: checkpoint (32, 8) float32, this config (64, 8)" \
      in message, message
  assert "\n  params/decoder/conv_blocks_0/res_0/conv1/kernel: checkpoint (3, 3, 32, 32) " \
      "float32, this config (3, 3, 64, 64) float32" in message, message
  assert "more under opt_state/" in message  # long lists are cut per top-level entry
  assert "quantizer.codebook_size: 32 -> 64" in message and "model.config.ch: 32 -> 64" in message
  # The failed attempt changed nothing: the reference run still restores.
  assert _committed(reference)[-1] == 6


def test_a_second_run_on_the_same_workdir_fails_fast_naming_the_first(tmp_path):
  first = start_tiny(tmp_path, NO_EVAL)
  lines = _wait_for_line(first, "training: started")
  drain = threading.Thread(target=lambda: lines.extend(first.stderr), daemon=True)
  drain.start()
  second = start_tiny(tmp_path, NO_EVAL)
  result, err = finish(second)
  assert second.returncode != 0 and result is None
  assert re.search(rf"WorkdirLockedError: workdir {tmp_path} is in use by pid {first.pid} on "
                   rf"\S+ since \S+ \(run_tiny.py ", err), err[-2000:]
  assert "training: started" not in err and "compiling" not in err
  first.wait(timeout=240)
  drain.join(timeout=10)
  assert first.returncode == 0, "".join(lines)[-3000:]
  out = "".join(lines)
  assert "compiling the train step ..." in out and "compiled the train step and ran step 1" in out
  assert [r["step"] for r in _train_rows(tmp_path)] == [1, 2, 3, 4, 5, 6]
  assert (tmp_path / ".lock").read_text() == ""  # released


def test_a_damaged_newest_checkpoint_resumes_from_the_one_before(reference_run, tmp_path):
  reference, _ = reference_run
  workdir = shutil.copytree(reference, tmp_path / "run")
  state = workdir / "checkpoints" / "6" / "state"
  largest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  with open(largest, "r+b") as f:
    f.truncate(100)
  # log_every changes no array: the state still ends bit for bit as the reference's.
  result, err = run_tiny(workdir, {**REFERENCE, "train.log_every": 2})
  assert re.search(r"checkpoint step 6 in \S+ cannot be read: .*; using step 4 instead", err), \
      err[-3000:]
  assert "resumed from step 4" in err and result["step"] == 6
  assert "train.log_every: 1 -> 2" in err  # the config change is named, with both values
  assert os.listdir(workdir / "corrupt_checkpoints") == ["6"]
  assert_same_final_state(workdir, reference)
