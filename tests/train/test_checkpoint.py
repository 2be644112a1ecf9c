"""Checkpointer: state + Grain iterator + config in one step, non-finite states refused,
damaged steps passed over for the step before, readers that change nothing."""

import re
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.train import checkpoint
from jaxtok.train.state import TokenizerState


def _state(value: float) -> TokenizerState:
  z = jnp.zeros((), jnp.int32)
  return TokenizerState(step=z + 3, rng=jnp.arange(4, dtype=jnp.uint32),
                        params={"w": jnp.full((2, 3), value)}, quantizer_state={},
                        ema_params={"w": jnp.zeros((2, 3))}, opt_state=({"m": jnp.ones(3)},),
                        d_params={}, d_state={}, d_opt_state=(), lecam={}, skipped=z,
                        skipped_in_a_row=z)


def _iterator():
  return iter(grain.MapDataset.range(100).seed(1).shuffle().to_iter_dataset().batch(4))


def test_one_step_holds_state_data_position_and_config(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=2)
  it = _iterator()
  next(it), next(it)
  assert ckpt.save(3, _state(1.5), data_iterator=it, config={"model": {"ch": 32}})
  ckpt.wait()
  expected_next = next(it)

  fresh = checkpoint.Checkpointer(str(tmp_path))
  assert fresh.latest_step() == 3
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))
  it2 = _iterator()
  restored = fresh.restore(3, abstract, data_iterator=it2)
  np.testing.assert_array_equal(restored.params["w"], np.full((2, 3), 1.5))
  assert int(restored.step) == 3 and restored.rng.dtype == jnp.uint32
  np.testing.assert_array_equal(next(it2), expected_next)  # the data stream goes on exactly
  assert fresh.saved_config(3) == {"model": {"ch": 32}}
  fresh.close()
  ckpt.close()


def test_a_non_finite_state_is_never_written(tmp_path, caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  assert not ckpt.save(5, _state(float("nan")))
  ckpt.wait()
  assert ckpt.latest_step() is None and "NOT written" in caplog.text
  ckpt.close()


def test_mismatch_lines_name_path_and_both_shapes():
  saved = {"params": {"w": np.zeros((2, 3), np.float32), "old": np.zeros(1, np.float32)}}
  wanted = {"params": {"w": jax.ShapeDtypeStruct((4, 3), jnp.float32),
                       "new": jax.ShapeDtypeStruct((1,), jnp.float32)}}
  lines = checkpoint.describe_mismatch(saved, wanted)
  assert "  params/w: checkpoint (2, 3) float32, this config (4, 3) float32" in lines
  assert any("params/new: built by this config" in line for line in lines)
  assert any("params/old: in the checkpoint" in line for line in lines)
  assert checkpoint.config_differences({"a": {"b": 1}}, {"a": {"b": 2}}) == ["  a.b: 1 -> 2"]


def _damage(directory, step: int, how: str) -> None:
  state = directory / str(step) / "state"
  if how == "truncate":  # the largest array file cut short
    largest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
      f.truncate(10)
  else:  # its metadata deleted: must not read as "every array missing" (a config mismatch)
    (state / "_METADATA").unlink()


def test_a_damaged_step_falls_back_to_the_step_before_and_none_left_is_one_error(tmp_path,
                                                                                 caplog):
  ckpt = checkpoint.Checkpointer(str(tmp_path), max_to_keep=None, async_save=False)
  for step in (1, 2, 3):
    ckpt.save(step, _state(float(step)))
  ckpt.close()
  _damage(tmp_path, 3, "truncate")
  _damage(tmp_path, 2, "metadata")
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0.0))
  reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  state, step = reader.restore_newest(lambda s: reader.restore(s, abstract))
  assert step == 1 and reader.bad_steps == [3, 2]
  np.testing.assert_array_equal(state.params["w"], np.full((2, 3), 1.0))
  assert re.search(r"checkpoint step 3 in \S+ cannot be read: .+ \(nor can step 2\); "
                   r"using step 1 instead$", caplog.text, re.M), caplog.text
  with pytest.raises(checkpoint.CheckpointCorruptError, match="step 3 .* cannot be read"):
    reader.restore_newest(lambda s: reader.restore(s, abstract), step=3)  # no fallback asked
  with pytest.raises(FileNotFoundError, match="no checkpoint step 7 .*; steps there: 1, 2, 3"):
    reader.restore_newest(lambda s: reader.restore(s, abstract), step=7)
  _damage(tmp_path, 1, "truncate")
  with pytest.raises(checkpoint.CheckpointCorruptError,
                     match=r"no intact checkpoint in .*: steps 3, 2, 1 cannot be read"):
    reader.restore_newest(lambda s: reader.restore(s, abstract))
  reader.close()


def test_a_reader_creates_nothing_and_leaves_a_running_save_alone(tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint under .*: train first"):
    checkpoint.Checkpointer(str(tmp_path / "run" / "checkpoints"), read_only=True)
  assert not (tmp_path / "run").exists()
  writing = tmp_path / "3.orbax-checkpoint-tmp-1700000000000000"  # a save in flight
  writing.mkdir()
  reader = checkpoint.Checkpointer(str(tmp_path), read_only=True)
  time.sleep(0.5)  # a writer's clean-up of unfinished saves runs in the background by then
  reader.close()
  assert writing.exists()
