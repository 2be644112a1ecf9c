"""The RAR trainer: the loss falls on a learnable token pattern while the random-order ratio
follows its annealing schedule, a step on 8 devices equals the single-device step, and
`jaxtok sample` samples an export.

One training subprocess (sharing the persistent compile cache of the other training tests).
"""

import os

import numpy as np
import pytest

from jaxtok import cli
from jaxtok.configs.demo import rar as rar_config
from jaxtok.models.generators import rar
from jaxtok.train import generator, rar_trainer
from jaxtok.train.metrics import read_jsonl
from tests.train.conftest import (assert_sharded_step_equals_run, every_step_config,
                                   train_in_subprocess)
from tests.train.test_generators import _export_untrained_tokenizer, write_tokens

STEPS = 12


def tiny_config(token_dir: str):
  return every_step_config(rar_config.get_config("tiny"), token_dir, STEPS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, token_dir, result) of a tiny run on grids that count up from an offset."""
  grids = (np.arange(16).reshape(1, 4, 4) + np.arange(32)[:, None, None]) % 32
  token_dir = write_tokens(tmp_path_factory.mktemp("tokens"), grids, 32)
  workdir = str(tmp_path_factory.mktemp("rar"))
  result = train_in_subprocess("tests.train.test_rar_trainer:tiny_config", workdir, token_dir)
  return workdir, token_dir, result


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
  metrics = assert_sharded_step_equals_run(workdir, tiny_config(token_dir),
                                           rar_trainer.make_train_step, generator.init_state,
                                           generator.train_iterator, atol=1e-6)
  assert int(metrics["skipped"]) == 0 and float(metrics["random_order_ratio"]) == 1.0


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
