"""Guards: a non-finite step leaves the state untouched (selected, not multiplied), is
counted, and K in a row abort the run; stop signals set a flag instead of killing; one process
at a time holds a workdir."""

import os
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.train import guards, sharding
from jaxtok.train.state import TokenizerState


def _toy_state(value: float) -> TokenizerState:
  z = jnp.zeros((), jnp.int32)
  tree = {"w": jnp.full((3,), value)}
  return TokenizerState(step=z, rng=jnp.zeros((4,), jnp.uint32), params=tree,
                        quantizer_state={}, ema_params=tree, opt_state=(tree,), d_params={},
                        d_state={}, d_opt_state=(), lecam={}, skipped=z, skipped_in_a_row=z)


def test_guard_step_keeps_the_old_state_on_a_non_finite_step():
  old = _toy_state(1.0)
  new = _toy_state(jnp.inf).replace(step=old.step + 1, rng=old.rng + 1)
  kept = guards.guard_step(jnp.array(False), new, old)
  np.testing.assert_array_equal(kept.params["w"], old.params["w"])  # inf * 0 would be NaN
  np.testing.assert_array_equal(kept.opt_state[0]["w"], old.opt_state[0]["w"])
  assert kept.step == 1 and kept.rng[0] == 1  # the data stream and keys move on
  assert kept.skipped == 1 and kept.skipped_in_a_row == 1
  again = guards.guard_step(jnp.array(False), new, kept)
  assert again.skipped == 2 and again.skipped_in_a_row == 2
  good = guards.guard_step(jnp.array(True), _toy_state(2.0), again)
  assert good.params["w"][0] == 2.0 and good.skipped == 2 and good.skipped_in_a_row == 0


def test_real_step_on_nan_images_changes_nothing_but_step_and_key(tiny_single):
  _, _, host_state, step, mesh, shardings = tiny_single
  state = jax.device_put(host_state, shardings)
  images = np.full((8, 16, 16, 3), np.nan, np.float32)
  new, metrics = step(state, sharding.global_batch({"image": images}, mesh), {})
  new = jax.device_get(new)
  assert metrics["skipped"] == 1 and new.skipped == 1 and new.skipped_in_a_row == 1
  assert new.step == host_state.step + 1
  for name in ("params", "ema_params", "opt_state", "quantizer_state", "d_params", "d_state",
               "d_opt_state", "lecam"):
    for a, b in zip(jax.tree.leaves(getattr(new, name)), jax.tree.leaves(getattr(host_state,
                                                                                  name))):
      np.testing.assert_array_equal(a, b, err_msg=name)


def test_skip_monitor_aborts_after_k_in_a_row_naming_the_step(caplog):
  monitor = guards.SkipMonitor(3, skipped_total=4)  # a resumed run had skipped 4 before
  monitor.update(10, 4, 0)
  monitor.update(11, 5, 1)
  monitor.update(12, 6, 2)
  assert "step 10" not in caplog.text and "step 11: non-finite" in caplog.text
  with pytest.raises(guards.NonFiniteError, match="training stopped at step 13: 3 consecutive"):
    monitor.update(13, 7, 3)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_sets_a_flag_and_restores_the_handler(signum):
  before = signal.getsignal(signum)
  with guards.StopSignal() as stop:
    os.kill(os.getpid(), signum)
    assert stop.requested and stop.signal_name == signal.Signals(signum).name
  assert signal.getsignal(signum) is before


def test_workdir_lock_refuses_a_second_holder_naming_the_first_and_survives_errors(tmp_path):
  workdir = tmp_path / "run"
  with pytest.raises(RuntimeError, match="boom"):
    with guards.WorkdirLock(str(workdir)):
      holder = (workdir / ".lock").read_text().split()
      assert holder[:2] == [str(os.getpid()), socket.gethostname()]
      # flock belongs to the open file, so a second open in this process is a second holder.
      with pytest.raises(guards.WorkdirLockedError,
                         match=rf"in use by pid {os.getpid()} on \S+ since 20\d\d-"):
        guards.WorkdirLock(str(workdir)).__enter__()
      raise RuntimeError("boom")
  with guards.WorkdirLock(str(workdir), create=False):  # released by the exception
    pass
  with pytest.raises(FileNotFoundError, match="does not exist"):
    guards.WorkdirLock(str(tmp_path / "missing"), create=False).__enter__()
  assert not (tmp_path / "missing").exists()


def test_workdir_lock_of_a_killed_process_does_not_block(tmp_path):
  code = ("import sys, time; from jaxtok.train import guards; "
          "guards.WorkdirLock(sys.argv[1]).__enter__(); print('locked', flush=True); "
          "time.sleep(120)")
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(guards.WorkdirLockedError, match=f"pid {proc.pid} "):
      guards.WorkdirLock(str(tmp_path)).__enter__()
  finally:
    proc.kill()
    proc.wait()
  with guards.WorkdirLock(str(tmp_path)):  # its stale line is no obstacle
    assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


def test_abort_note_says_what_the_newest_checkpoint_holds():
  error = guards.NonFiniteError("stopped", step=13, in_a_row=3)  # steps 11-13 skipped
  note = lambda newest: guards.checkpoint_note(error, newest, "/run/checkpoints")
  assert "no checkpoint was written before the abort" in note(None)
  assert "step 10 in /run/checkpoints, from before the non-finite steps" in note(10)
  assert "step 12 in /run/checkpoints; it holds the parameters of step 10" in note(12)
