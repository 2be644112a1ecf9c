"""Shared fixtures for the training tests: a tiny reference run in a subprocess, and the tiny
config's single-device state and jitted step built once per session."""

import json
import os
import subprocess
import sys
import tempfile

import jax
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_TINY = os.path.join(REPO, "tests", "train", "run_tiny.py")
# The reference run: 6 steps of the tiny config, eval at 3 and 6, checkpoints at 2, 4, 6.
REFERENCE = {"train.steps": 6, "eval.every_steps": 3, "checkpoint.every_steps": 2}


def subprocess_env() -> dict[str, str]:
  """The test process's environment (CPU, 8 fake devices) plus a persistent compile cache
  shared by every training subprocess: only the first one compiles the train step."""
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR",
                 os.path.join(tempfile.gettempdir(), "jaxtok-test-jax-cache"))
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def start_tiny(workdir, overrides: dict, stop_after: int | None = None) -> subprocess.Popen:
  """Starts tests/train/run_tiny.py; stdout and stderr are pipes of text lines."""
  args = [sys.executable, RUN_TINY, str(workdir), json.dumps(overrides)]
  if stop_after is not None:
    args.append(str(stop_after))
  return subprocess.Popen(args, env=subprocess_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[dict | None, str]:
  """Waits for the process; returns (its RESULT dict or None, its stderr)."""
  out, err = proc.communicate(timeout=timeout)
  lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
  return (json.loads(lines[-1][7:]) if lines else None), err


def run_tiny(workdir, overrides: dict, stop_after: int | None = None) -> tuple[dict, str]:
  """Runs the tiny config to completion; fails the test with its stderr if it fails."""
  proc = start_tiny(workdir, overrides, stop_after)
  result, err = finish(proc)
  assert proc.returncode == 0 and result is not None, f"training failed:\n{err[-4000:]}"
  return result, err


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
  """(workdir, result) of the uninterrupted 6-step tiny run."""
  workdir = tmp_path_factory.mktemp("reference")
  result, _ = run_tiny(workdir, REFERENCE)
  return workdir, result


@pytest.fixture(scope="session")
def tiny_single():
  """(config, parts, host state, jitted step, mesh, shardings) of the tiny config on one
  device."""
  from jaxtok.configs.demo import tokenizer as demo_config  # pylint: disable=g-import-not-at-top
  from jaxtok.train import loop, sharding  # pylint: disable=g-import-not-at-top
  from jaxtok.train import tokenizer_trainer as tt  # pylint: disable=g-import-not-at-top

  config = demo_config.get_config("tiny")
  parts = tt.build_parts(config)
  mesh = sharding.make_mesh((1, 1, 1))
  init, key, shardings, _, step = tt.jitted_step(parts, config, mesh)
  host_state = jax.device_get(loop.jit_init(init, shardings)(key))
  return config, parts, host_state, step, mesh, shardings


_TRAIN = """
import importlib, json, sys
from absl import flags
flags.FLAGS.mark_as_parsed()
import jax
jax.config.update("jax_threefry_partitionable", False)  # as tests/conftest.py sets it
from jaxtok import train
module, _, name = sys.argv[3].partition(":")
config = getattr(importlib.import_module(module), name)(sys.argv[2])
print("RESULT " + json.dumps(train.train(config, sys.argv[1])), flush=True)
"""


def train_in_subprocess(make_config: str, workdir: str, data_dir: str) -> dict:
  """Trains `make_config(data_dir)` ("tests.train.module:function") into `workdir` in a new
  process (sharing the compile cache); returns its result, failing the test with its stderr."""
  proc = subprocess.run([sys.executable, "-c", _TRAIN, workdir, data_dir, make_config],
                        env=subprocess_env(), cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, f"training failed:\n{proc.stderr[-4000:]}"
  return json.loads(lines[-1][7:])


def assert_sharded_step_equals_run(workdir: str, config, make_train_step, init_state,
                                   train_iterator, atol: float) -> dict:
  """Restores step 1 of a run on a 2x2x2 mesh, takes one step there, and requires the state
  of the run's step-2 checkpoint (made on one device) within `atol`; returns the metrics."""
  import flax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from jaxtok.train import checkpoint, generator, loop, sharding

  mesh = sharding.make_mesh((2, 2, 2))
  model, tx, lr = generator.build_parts(config)
  _, shardings, abstract = loop.layout(lambda k: init_state(model, tx, k), config.seed, mesh)
  data = train_iterator(config, model)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
  try:
    state = ckpt.restore(1, abstract, data_iterator=data, config=config)
  finally:
    ckpt.close()
  step = make_train_step(config, model, tx, lr)
  new, metrics = loop.jit_step(step, mesh, shardings)(state,
                                                      sharding.global_batch(next(data), mesh))
  flat = lambda tree: {jax.tree_util.keystr(p): np.asarray(v)
                       for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}
  got = flat(flax.serialization.to_state_dict(jax.device_get(new)))
  want = flat(ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "2",
                                                              "state")))
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], atol=atol, rtol=0, err_msg=k)
  return metrics


def every_step_config(config, data_path: str, steps: int):
  """`config` (a demo config's "tiny" variant) on `data_path` for `steps` steps, keeping every
  step's checkpoint: step 1's is the reference of the 2x2x2-mesh step checks."""
  config.data.path = data_path
  config.train.steps = steps
  config.checkpoint.every_steps = 1
  config.checkpoint.max_to_keep = steps + 1
  return config
