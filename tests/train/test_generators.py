"""The generator trainers (GPT and MaskGIT): the loss falls on a learnable token pattern, a GPT
run split by a restart in a new process ends bit for bit where the uninterrupted run ends, a
step on 8 devices equals the single-device step, and `jaxtok sample` decodes samples of both.

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

import jaxtok
from jaxtok import build, cli, inference
from jaxtok.configs.demo import ar as ar_config
from jaxtok.configs.demo import maskgit as maskgit_config
from jaxtok.configs.demo import tokenizer as tokenizer_config
from jaxtok.data import tokens as token_data
from jaxtok.models.generators.ar import GPT
from jaxtok.train import ar_trainer, checkpoint, generator, loop, sharding
from jaxtok.train import export as export_lib
from jaxtok.train import state as state_lib
from jaxtok.train.metrics import read_jsonl
from tests.train.conftest import REPO, every_step_config, subprocess_env

STEPS = 16
RUN = """
import json, sys
from absl import flags
flags.FLAGS.mark_as_parsed()
import jax
jax.config.update("jax_threefry_partitionable", False)  # as tests/conftest.py sets it
from tests.train.test_generators import tiny_config
from jaxtok import train
workdir, token_dir, stop_after, kind = sys.argv[1:5]
stop_after = json.loads(stop_after)
result = train.train(tiny_config(token_dir, kind), workdir, stop_after=stop_after)
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


def tiny_config(token_dir: str, kind: str = "ar", **overrides):
  config = every_step_config({"ar": ar_config, "maskgit": maskgit_config}[kind].get_config(
      "tiny"), token_dir, STEPS)
  config.update_from_flattened_dict(overrides)
  return config


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
  # A deterministic pattern: each grid counts up from its own offset, so every token but the
  # first follows from the one before it.
  grids = (np.arange(16).reshape(1, 4, 4) + np.arange(32)[:, None, None]) % 32
  return write_tokens(tmp_path_factory.mktemp("tokens"), grids, 32)


def run_tiny(workdir, token_dir: str, stop_after: int | None = None, kind: str = "ar"
             ) -> tuple[dict, str]:
  """Trains tiny_config in a new process; returns (its result, its stderr)."""
  proc = subprocess.run([sys.executable, "-c", RUN, str(workdir), token_dir,
                         json.dumps(stop_after), kind], env=subprocess_env(), cwd=REPO,
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
  model, tx, lr = generator.build_parts(config)
  init = lambda k: generator.init_state(model, tx, k)
  _, shardings, abstract = loop.layout(init, config.seed, mesh)
  specs = {str(s.spec) for s in jax.tree.leaves(shardings)}
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
  data = generator.train_iterator(config, model)
  ckpt = checkpoint.Checkpointer(os.path.join(reference, "checkpoints"), max_to_keep=None)
  try:
    state = ckpt.restore(1, abstract, data_iterator=data, config=config)
  finally:
    ckpt.close()
  step = generator.make_train_step(model, ar_trainer.next_token_loss, tx, lr,
                                  config.train.ema_decay)
  new, metrics = loop.jit_step(step, mesh, shardings)(state,
                                                      sharding.global_batch(next(data), mesh))
  assert int(metrics["skipped"]) == 0
  got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(
      flax.serialization.to_state_dict(jax.device_get(new)))[0]}
  want = _state_leaves(reference, 2)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0, err_msg=k)


def _labelled(config):
  return token_data.labelled_tokens(
      config.data.path, config.data.labels, token_shape=config.model.token_shape,
      codebook_size=config.model.codebook_size, num_classes=config.model.num_classes)


def test_token_shape_mismatch_and_labels_are_checked(token_dir, tmp_path):
  with pytest.raises(ValueError, match=r"model.token_shape=\(8, 8\)"):
    _labelled(tiny_config(token_dir, **{"model.token_shape": (8, 8)}))
  with pytest.raises(ValueError, match="set model.num_classes=0"):
    _labelled(tiny_config(token_dir, **{"model.num_classes": 10}))
  labelled = write_tokens(tmp_path / "labelled", np.zeros((4, 4, 4), np.int32), 32,
                          labels=[0, 3, 1, 2])
  source = _labelled(tiny_config(labelled, **{"model.num_classes": 4, "data.labels": "metadata"}))
  assert [int(source[i]["label"]) for i in range(4)] == [0, 3, 1, 2]
  with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
    _labelled(tiny_config(labelled, **{"model.num_classes": 3, "data.labels": "metadata"}))


def _export_untrained_tokenizer(out) -> str:
  """A tiny VQGAN (16x16 images -> 4x4 tokens of 32 codes) in `jaxtok export`'s format."""
  config = tokenizer_config.get_config("tiny")
  config.model.config.ch_mult = (1, 2, 2)
  tokenizer = build.model(config)
  variables = jax.jit(lambda k: nn.meta.unbox(tokenizer.init(
      {"params": k, "quantizer": k}, jnp.zeros((1, 16, 16, 3)))))(state_lib.make_key(0))
  return inference.save(str(out), checkpoint.config_to_json(config), dict(variables))


@pytest.fixture(scope="module")
def tokenizer_export(tmp_path_factory):
  return _export_untrained_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def test_sample_command_end_to_end(reference_run, tokenizer_export, tmp_path, capsys):
  generator_dir, _ = reference_run
  export = str(tmp_path / "export")
  assert cli.main(["export", "--workdir", generator_dir, "--out", export]) == 0
  out = tmp_path / "samples"
  args = ["sample", "--model", export, "--tokenizer", tokenizer_export, "--out", str(out)]
  assert cli.main(args + ["--num", "5", "--seed", "1", "--top-k", "8"]) == 0
  ids = np.load(out / "samples.npz")["tokens"]
  assert ids.shape == (5, 4, 4) and ids.dtype == np.int32 and 0 <= ids.min() <= ids.max() < 32
  grid = Image.open(out / "samples.png")
  assert grid.size == (3 * 16 + 2 * 2, 2 * 16 + 2)  # 3 x 2 grid of 16x16 images, 2px gaps
  # The workdir samples as its export does (newest checkpoint, EMA params).
  assert cli.main(["sample", "--model", generator_dir, "--tokenizer", tokenizer_export,
                   "--out", str(tmp_path / "from_workdir"), "--num", "5", "--seed", "1",
                   "--top-k", "8"]) == 0
  np.testing.assert_array_equal(np.load(tmp_path / "from_workdir" / "samples.npz")["tokens"], ids)
  # A bad class id, a cfg scale without a class, MaskGIT options for a GPT, a tokenizer given
  # as the generator: one-line errors, exit status 2.
  for extra, message in ((["--class-id", "3"], "class_id: this generator is unconditional"),
                         (["--cfg-scale", "2.0"], "classifier-free guidance"),
                         (["--num-steps", "4"], "MaskGIT options")):
    assert cli.main(args + extra) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
  assert cli.main(["sample", "--model", tokenizer_export, "--tokenizer", tokenizer_export,
                   "--out", str(out)]) == 2
  assert "holds a 'tokenizer' model; expected a generator export" in capsys.readouterr().err
  for command in ("reconstruct", "tokenize"):  # and a generator given as the tokenizer
    assert cli.main([command, "--model", export, "--images", str(tmp_path), "--out",
                     str(tmp_path / command)]) == 2
    err = capsys.readouterr().err
    assert "holds a 'ar' model; expected a tokenizer export" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / command).exists()
  # Class ids out of range and tokenizers of another grid are refused before any sampling.
  tok = jaxtok.load(tokenizer_export)
  config = tiny_config("", **{"model.num_classes": 10})
  conditional = inference.LoadedGenerator(build.model(config), None, config)
  with pytest.raises(ValueError, match=r"class_id must lie in \[0, 10\); got 10"):
    inference.sample_images(conditional, tok, class_id=10)
  config = tiny_config("", **{"model.token_shape": (8, 8)})
  other = inference.LoadedGenerator(build.model(config), None, config)
  with pytest.raises(ValueError, match=r"the tokenizer makes \(4, 4\) tokens of 32 codes"):
    inference.sample_images(other, tok)
  # An export carrying the config of the tokenizer its tokens came from (the `tokenizer`
  # entry) samples with that tokenizer, and refuses one of equal sizes but other fields.
  with open(os.path.join(export, inference.CONFIG_FILE)) as f:
    exported = json.load(f)
  for ch, status in ((tok.config.model.config.ch, 0), (tok.config.model.config.ch // 2, 2)):
    trained_on = tok.config.to_dict()
    trained_on["model"]["config"]["ch"] = ch
    with open(os.path.join(export, inference.CONFIG_FILE), "w") as f:
      json.dump({**exported, "tokenizer": trained_on}, f)
    assert cli.main(args + ["--num", "2"]) == status
  err = capsys.readouterr().err
  assert f"model.config.ch: {ch} vs {2 * ch}" in err and len(err.strip().splitlines()) == 1, err


def test_maskgit_trains_on_the_spine_and_samples(token_dir, tokenizer_export, tmp_path):
  """The MaskGIT trainer: masked-token loss falls, `jaxtok train` / `export` / `sample` run."""
  result, _ = run_tiny(tmp_path / "run", token_dir, kind="maskgit")
  rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
  assert result["step"] == STEPS and [r["step"] for r in rows] == list(range(1, STEPS + 1))
  assert all(0.0 < r["mask_ratio"] <= 1.0 for r in rows)
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.25, [r["loss"] for r in rows]
  export = str(tmp_path / "export")
  assert cli.main(["export", "--workdir", str(tmp_path / "run"), "--out", export]) == 0
  loaded = jaxtok.load(export)
  assert isinstance(loaded.model, build.resolve("generator", "maskgit.MaskGIT"))
  out = tmp_path / "samples"
  assert cli.main(["sample", "--model", export, "--tokenizer", tokenizer_export, "--out",
                   str(out), "--num", "3", "--num-steps", "4"]) == 0
  ids = np.load(out / "samples.npz")["tokens"]
  assert ids.shape == (3, 4, 4) and 0 <= ids.min() <= ids.max() < 32


def test_masked_token_loss_counts_masked_positions_only():
  logits = jnp.zeros((1, 4, 3)).at[0, 0, 2].set(100.0)  # position 0 certain of code 2
  tokens = jnp.array([[2, 0, 1, 2]])
  full, _ = generator.cross_entropy(logits, tokens)
  only_first, acc = generator.cross_entropy(logits, tokens, jnp.array([[1, 0, 0, 0]]))
  assert float(only_first) < 1e-6 and float(acc) == 1.0 and float(full) > 0.8
  smoothed, _ = generator.cross_entropy(logits, tokens, jnp.array([[1, 0, 0, 0]]), 0.1)
  # (1 - eps) * 0 - eps * mean(log p) with log p = (-100, -100, 0) at the one masked position.
  np.testing.assert_allclose(smoothed, 0.1 * 200.0 / 3.0, rtol=1e-4)


def test_train_command_dispatches_on_the_config_trainer(monkeypatch, tmp_path):
  calls = []
  monkeypatch.setattr(ar_trainer, "train",
                      lambda config, workdir: calls.append(config) or {"step": 0})
  assert cli.main(["train", "--config", "configs/demo/ar.py:tiny", "--workdir", str(tmp_path),
                   "--config.train.steps=3"]) == 0
  assert len(calls) == 1 and calls[0].train.steps == 3 and calls[0].trainer == "ar"


def test_configs_build_their_generators():
  for config in (ar_config.get_config(), ar_config.get_config("tiny"),
                 maskgit_config.get_config(), maskgit_config.get_config("tiny")):
    model = build.model(config)
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *model.token_shape), jnp.int32))
  from jaxtok.configs.generators import llamagen_gpt_b  # pylint: disable=g-import-not-at-top

  config = llamagen_gpt_b.get_config()
  model = build.model(config)
  assert {k: getattr(model, k) for k in GPT.PRESETS["GPT-B"]} == GPT.PRESETS["GPT-B"]
  assert (config.optimizer.lr, config.optimizer.b2, config.optimizer.weight_decay,
          config.train.batch_size, model.cond_dropout, model.token_dropout) == (
              1e-4, 0.95, 0.05, 256, 0.1, 0.1)


def test_a_generator_export_names_the_tokenizer_it_was_trained_on(tmp_path):
  grids = np.zeros((2, 4, 4), np.int32)
  token_dir = write_tokens(tmp_path / "tokens", grids, 32)
  meta_path = os.path.join(token_dir, token_data.METADATA)
  with open(meta_path) as f:
    meta = json.load(f)
  tokenizer = checkpoint.config_to_json(tokenizer_config.get_config("tiny"))
  with open(meta_path, "w") as f:
    json.dump({**meta, "tokenizer_config": tokenizer}, f)
  config = checkpoint.config_to_json(tiny_config(token_dir))
  assert export_lib.trained_on_tokenizer(config) == tokenizer
  assert export_lib.trained_on_tokenizer({**config, "data": {"path": str(tmp_path)}}) is None
  assert export_lib.trained_on_tokenizer(tokenizer) is None  # a tokenizer run names none
