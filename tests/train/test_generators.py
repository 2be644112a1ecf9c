"""The generator trainer: the loss falls on a learnable token pattern, a run split by a restart
in a new process ends bit for bit where the uninterrupted run ends, a step on 8 devices equals
the single-device step, and `jaxtok sample` decodes samples of a trained generator.

The training runs are subprocesses sharing the persistent compile cache of the other training
tests (tests/train/conftest.py): only the first compiles the train step.
"""

import json
import os
import subprocess
import sys

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from array_record.python import array_record_module
from PIL import Image

from configs.demo import generator as generator_config
from configs.demo import tokenizer as tokenizer_config
import jaxtok
from jaxtok import cli
from jaxtok.data import tokens as token_data
from jaxtok.models.generators import ar
from jaxtok.train import checkpoint, sharding
from jaxtok.train import generator_trainer as gt
from jaxtok.train import state as state_lib
from jaxtok.train.metrics import read_jsonl
from tests.train.conftest import REPO, subprocess_env

STEPS = 16
RUN = """
import json, sys
from absl import flags
flags.FLAGS.mark_as_parsed()
import jax
jax.config.update("jax_threefry_partitionable", False)  # as tests/conftest.py sets it
from tests.train.test_generator_trainer import tiny_config
from jaxtok.train import generator_trainer
workdir, token_dir, stop_after = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
result = generator_trainer.train(tiny_config(token_dir), workdir, stop_after=stop_after)
print("RESULT " + json.dumps(result), flush=True)
"""


def write_tokens(directory, grids: np.ndarray, codebook_size: int, labels=None) -> str:
  """A token directory in `jaxtok tokenize`'s record format (one int32 grid per record)."""
  os.makedirs(directory, exist_ok=True)
  name = token_data.shard_name(0, 1)
  writer = array_record_module.ArrayRecordWriter(os.path.join(directory, name), "group_size:1")
  for grid in grids:
    writer.write(np.asarray(grid, "<i4").tobytes())
  writer.close()
  meta = {"token_shape": list(grids.shape[1:]), "codebook_size": codebook_size,
          "num_records": len(grids), "shards": [name]}
  if labels is not None:
    meta["labels"] = [int(x) for x in labels]
  with open(os.path.join(directory, token_data.METADATA), "w") as f:
    json.dump(meta, f)
  return str(directory)


def tiny_config(token_dir: str, **overrides):
  config = generator_config.get_config("tiny")
  config.data.path = token_dir
  config.train.steps = STEPS
  config.checkpoint.every_steps = 1  # step 1's checkpoint is the sharding test's reference
  config.checkpoint.max_to_keep = STEPS + 1
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
  # A deterministic pattern: each grid counts up from its own offset, so every token but the
  # first follows from the one before it.
  grids = (np.arange(16).reshape(1, 4, 4) + np.arange(32)[:, None, None]) % 32
  return write_tokens(tmp_path_factory.mktemp("tokens"), grids, 32)


def run_tiny(workdir, token_dir: str, stop_after: int | None = None) -> tuple[dict, str]:
  """Trains tiny_config in a new process; returns (its result, its stderr)."""
  proc = subprocess.run([sys.executable, "-c", RUN, str(workdir), token_dir,
                         json.dumps(stop_after)], env=subprocess_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, f"training failed:\n{proc.stderr[-4000:]}"
  return json.loads(lines[-1][7:]), proc.stderr


@pytest.fixture(scope="module")
def reference_run(token_dir, tmp_path_factory):
  """(workdir, result) of the uninterrupted tiny run."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  return workdir, run_tiny(workdir, token_dir)[0]


def _state_leaves(workdir, step: int) -> dict[str, np.ndarray]:
  tree = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                         "state"))
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_loss_falls_on_a_learnable_pattern(reference_run):
  workdir, result = reference_run
  rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert abs(rows[0]["loss"] - np.log(32)) < 0.05  # zero-initialised head: uniform at first
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.25, [r["loss"] for r in rows]
  assert result["step"] == STEPS and rows[-1]["accuracy"] > rows[0]["accuracy"]
  assert all(r["tokens_per_sec"] > 0 and r["skipped"] == 0 for r in rows)


def test_split_run_equals_uninterrupted_run(reference_run, token_dir, tmp_path):
  reference, _ = reference_run
  first, _ = run_tiny(tmp_path, token_dir, stop_after=STEPS // 2)
  assert first["step"] == STEPS // 2
  second, err = run_tiny(tmp_path, token_dir)  # restores state and data position
  assert second["step"] == STEPS and f"resumed from step {STEPS // 2}" in err
  got, want = _state_leaves(tmp_path, STEPS), _state_leaves(reference, STEPS)
  assert got.keys() == want.keys()
  for part in ("'params'", "'opt_state'", "'ema_params'", "'rng'"):
    assert any(part in k for k in want), part
  differing = [k for k in want if not np.array_equal(got[k], want[k])]
  assert not differing, f"not bitwise equal: {differing[:5]}"


def test_one_step_on_a_2x2x2_mesh_equals_the_single_device_step(reference_run, token_dir):
  """Restores the single-device run's step-1 checkpoint (state and data position) onto 8
  devices, takes one step there, and compares with that run's step-2 checkpoint."""
  reference, _ = reference_run
  config = tiny_config(token_dir)
  mesh = sharding.make_mesh((2, 2, 2))
  model, tx, lr = gt.build(config)
  _, shardings, abstract = gt.layout(model, tx, config, mesh)
  specs = {str(s.spec) for s in jax.tree.leaves(shardings)}
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
  data = gt.train_iterator(config, gt.make_source(config))
  ckpt = checkpoint.Checkpointer(os.path.join(reference, "checkpoints"), max_to_keep=None)
  try:
    state = ckpt.restore(1, abstract, data_iterator=data, config=config)
  finally:
    ckpt.close()
  new, metrics = gt.jit_train_step(model, tx, lr, config, mesh, shardings)(
      state, sharding.global_batch(next(data), mesh))
  assert int(metrics["skipped"]) == 0
  got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(
      flax.serialization.to_state_dict(jax.device_get(new)))[0]}
  want = _state_leaves(reference, 2)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0, err_msg=k)


def test_token_shape_mismatch_and_labels_are_checked(token_dir, tmp_path):
  with pytest.raises(ValueError, match=r"model.token_shape=\(8, 8\)"):
    gt.make_source(tiny_config(token_dir, **{"model.token_shape": (8, 8)}))
  with pytest.raises(ValueError, match="set model.num_classes=0"):
    gt.make_source(tiny_config(token_dir, **{"model.num_classes": 10}))
  labelled = write_tokens(tmp_path / "labelled", np.zeros((4, 4, 4), np.int32), 32,
                          labels=[0, 3, 1, 2])
  source = gt.make_source(tiny_config(labelled, **{"model.num_classes": 4,
                                                   "data.labels": "metadata"}))
  assert [int(source[i]["label"]) for i in range(4)] == [0, 3, 1, 2]
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    gt.make_source(tiny_config(labelled, **{"model.num_classes": 3, "data.labels": "metadata"}))


def _export_untrained_tokenizer(out) -> str:
  """A tiny VQGAN (16x16 images -> 4x4 tokens of 32 codes) in `jaxtok export`'s format."""
  config = tokenizer_config.get_config("tiny")
  config.model.config.ch_mult = (1, 2, 2)
  parts = state_lib.build_parts(config)
  variables = jax.jit(lambda k: nn.meta.unbox(parts.tokenizer.init(
      {"params": k, "quantizer": k}, jnp.zeros((1, 16, 16, 3)))))(state_lib.make_key(0))
  saver = ocp.StandardCheckpointer()
  saver.save(os.path.join(out, "variables"), dict(variables), force=True)
  saver.wait_until_finished()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump(checkpoint.config_to_json(config), f)
  return str(out)


def test_sample_command_end_to_end(reference_run, tmp_path, capsys):
  generator_dir, _ = reference_run
  tokenizer = _export_untrained_tokenizer(tmp_path / "tokenizer")
  out = tmp_path / "samples"
  args = ["sample", "--model", generator_dir, "--tokenizer", tokenizer, "--out", str(out)]
  assert cli.main(args + ["--num", "5", "--seed", "1", "--top-k", "8"]) == 0
  ids = np.load(out / "samples.npz")["tokens"]
  assert ids.shape == (5, 4, 4) and ids.dtype == np.int32 and 0 <= ids.min() <= ids.max() < 32
  grid = Image.open(out / "samples.png")
  assert grid.size == (3 * 16 + 2 * 2, 2 * 16 + 2)  # 3 x 2 grid of 16x16 images, 2px gaps
  # A bad class id or a cfg scale without a class: one-line errors, exit status 2.
  assert cli.main(args + ["--class-id", "3"]) == 2
  assert "--class-id: this generator is unconditional" in capsys.readouterr().err
  assert cli.main(args + ["--cfg-scale", "2.0"]) == 2
  err = capsys.readouterr().err
  assert "classifier-free guidance" in err and len(err.strip().splitlines()) == 1
  # Class ids out of range and tokenizers of another grid are refused before any sampling.
  tok = jaxtok.load(tokenizer)
  config = tiny_config("", **{"model.num_classes": 10})
  conditional = gt.LoadedGenerator(gt.build_model(config.model), None, config)
  with pytest.raises(ValueError, match=r"--class-id must lie in \[0, 10\); got 10"):
    gt.sample_images(conditional, tok, str(out), class_id=10)
  config = tiny_config("", **{"model.token_shape": (8, 8)})
  other = gt.LoadedGenerator(gt.build_model(config.model), None, config)
  with pytest.raises(ValueError, match=r"the tokenizer makes \(4, 4\) tokens of 32 codes"):
    gt.sample_images(other, tok, str(out))


def test_train_command_dispatches_on_the_config_trainer(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(gt, "train", lambda config, workdir: calls.append(config) or {"step": 0})
  config = os.path.join(REPO, "configs", "demo", "generator.py") + ":tiny"
  assert cli.main(["train", "--config", config, "--workdir", str(tmp_path),
                   "--config.train.steps=3"]) == 0
  assert len(calls) == 1 and calls[0].train.steps == 3 and calls[0].trainer == "generator"


def test_configs_build_their_generators():
  for arg in (None, "tiny"):
    config = generator_config.get_config(arg)
    model = gt.build_model(config.model)
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *model.token_shape), jnp.int32))
  from configs.generators import llamagen_gpt_b  # pylint: disable=g-import-not-at-top

  config = llamagen_gpt_b.get_config()
  model = gt.build_model(config.model)
  assert {k: getattr(model, k) for k in ar.PRESETS["GPT-B"]} == ar.PRESETS["GPT-B"]
  assert (config.optimizer.lr, config.optimizer.b2, config.optimizer.weight_decay,
          config.train.batch_size, model.cond_dropout, model.token_dropout) == (
              1e-4, 0.95, 0.05, 256, 0.1, 0.1)
