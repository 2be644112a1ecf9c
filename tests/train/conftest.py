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
