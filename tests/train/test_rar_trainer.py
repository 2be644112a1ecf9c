"""The RAR trainer: the loss falls on a learnable token pattern while the random-order ratio
follows its annealing schedule, a step on 8 devices equals the single-device step, and
`jaxtok sample` samples an export.

One training subprocess (sharing the persistent compile cache of the other training tests).
"""

import json
import os
import subprocess
import sys

import flax
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jaxtok import cli
from jaxtok.configs.demo import rar as rar_config
from jaxtok.models.generators import rar
from jaxtok.train import checkpoint, generator, loop, rar_trainer, sharding
from jaxtok.train.metrics import read_jsonl
from tests.train.conftest import REPO, subprocess_env
from tests.train.test_generators import _export_untrained_tokenizer, write_tokens

STEPS = 12
RUN = """
import json, sys
from absl import flags
flags.FLAGS.mark_as_parsed()
import jax
jax.config.update("jax_threefry_partitionable", False)  # as tests/conftest.py sets it
from tests.train.test_rar_trainer import tiny_config
from jaxtok import train
result = train.train(tiny_config(sys.argv[2]), sys.argv[1])
print("RESULT " + json.dumps(result), flush=True)
"""


def tiny_config(token_dir: str):
  config = rar_config.get_config("tiny")
  config.data.path = token_dir
  config.train.steps = STEPS
  config.checkpoint.every_steps = 1  # step 1's checkpoint is the sharding test's reference
  config.checkpoint.max_to_keep = STEPS + 1
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, token_dir, result) of a tiny run on grids that count up from an offset."""
  grids = (np.arange(16).reshape(1, 4, 4) + np.arange(32)[:, None, None]) % 32
  token_dir = write_tokens(tmp_path_factory.mktemp("tokens"), grids, 32)
  workdir = str(tmp_path_factory.mktemp("rar"))
  proc = subprocess.run([sys.executable, "-c", RUN, workdir, token_dir], env=subprocess_env(),
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, f"training failed:\n{proc.stderr[-4000:]}"
  return workdir, token_dir, json.loads(lines[-1][7:])


def test_loss_falls_while_the_orders_anneal_to_raster(run):
  workdir, _, result = run
  rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and result["step"] == STEPS
  assert abs(rows[0]["loss"] - np.log(32)) < 0.05  # zero-initialised head: uniform at first
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.25, [r["loss"] for r in rows]
  config = tiny_config("")
  # The ratio of the step that ends at `step` is that of the state's step before it.
  want = [float(rar.random_order_ratio(r["step"] - 1, config.orders.anneal_start,
                                       config.orders.anneal_end)) for r in rows]
  np.testing.assert_allclose([r["random_order_ratio"] for r in rows], want)
  assert want[0] == 1.0 and want[-1] == 0.0 and 0 < min(want[2:4]) < 1


def test_one_step_on_a_2x2x2_mesh_equals_the_single_device_step(run):
  workdir, token_dir, _ = run
  config = tiny_config(token_dir)
  mesh = sharding.make_mesh((2, 2, 2))
  model, tx, lr = generator.build_parts(config)
  _, shardings, abstract = loop.layout(lambda k: generator.init_state(model, tx, k),
                                       config.seed, mesh)
  data = generator.train_iterator(config, model)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  try:
    state = ckpt.restore(1, abstract, data_iterator=data, config=config)
  finally:
    ckpt.close()
  step = rar_trainer.make_train_step(config, model, tx, lr)
  new, metrics = loop.jit_step(step, mesh, shardings)(state,
                                                      sharding.global_batch(next(data), mesh))
  assert int(metrics["skipped"]) == 0 and float(metrics["random_order_ratio"]) == 1.0
  got = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(
      flax.serialization.to_state_dict(jax.device_get(new)))[0]}
  want = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "2", "state"))
  want = {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_flatten_with_path(want)[0]}
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=1e-6, rtol=0, err_msg=k)


def test_sample_command(run, tmp_path):
  workdir, _, _ = run
  export = str(tmp_path / "export")
  assert cli.main(["export", "--workdir", workdir, "--out", export]) == 0
  tokenizer = _export_untrained_tokenizer(tmp_path / "tokenizer")
  out = tmp_path / "samples"
  assert cli.main(["sample", "--model", export, "--tokenizer", tokenizer, "--out", str(out),
                   "--num", "3", "--seed", "2", "--top-k", "8"]) == 0
  ids = np.load(out / "samples.npz")["tokens"]
  assert ids.shape == (3, 4, 4) and ids.dtype == np.int32 and 0 <= ids.min() <= ids.max() < 32
