"""The launchers build the right command: run with stand-ins for gcloud, srun and scontrol."""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).parent.parent
LAUNCH = ROOT / "tools" / "launch"


def fake_bin(tmp_path, name: str, script: str) -> None:
  path = tmp_path / name
  path.write_text("#!/usr/bin/env bash\n" + script)
  path.chmod(0o755)


def run(script: str, args: list[str], tmp_path, env: dict | None = None):
  env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", **(env or {})}
  return subprocess.run(["bash", str(LAUNCH / script), *args], capture_output=True, text=True,
                        env=env, timeout=30)


@pytest.mark.parametrize("script", ["tpu_pod.sh", "gpu_slurm.sh"])
def test_usage_without_arguments(script, tmp_path):
  result = run(script, [], tmp_path)
  assert result.returncode == 2 and "Usage" in result.stderr


def test_tpu_pod_runs_one_command_on_every_worker(tmp_path):
  fake_bin(tmp_path, "gcloud", 'printf "%s\\n" "$@"\n')
  result = run("tpu_pod.sh", ["my-tpu", "us-west4-a", "configs/x.py", "gs://b/run",
                              "--config.train.steps=10"], tmp_path)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[:6] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone"]
  assert "--worker=all" in lines
  command = result.stdout  # the --command argument spans several lines
  assert ("python3 -m jaxtok.cli train --config configs/x.py --workdir gs://b/run "
          "--config.train.steps=10") in command


def test_gpu_slurm_sets_the_coordinator_and_one_process_per_gpu(tmp_path):
  fake_bin(tmp_path, "scontrol", 'printf "node-a\\nnode-b\\n"\n')
  # srun stand-in: run the task command as task 3 of 16 (local id 1) with python = env.
  fake_bin(tmp_path, "srun", 'shift; SLURM_LOCALID=1 SLURM_NTASKS=16 SLURM_PROCID=3 "$@"\n')
  fake_bin(tmp_path, "fakepython", 'echo "$CUDA_VISIBLE_DEVICES $JAX_NUM_PROCESSES '
           '$JAX_PROCESS_ID $JAX_COORDINATOR_ADDRESS | $*"\n')
  result = run("gpu_slurm.sh", ["configs/x.py", "/shared/run", "--config.seed=1"], tmp_path,
               env={"SLURM_JOB_NODELIST": "node-[a-b]", "JAXTOK_PYTHON": "fakepython"})
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == ("1 16 3 node-a:12345 | -m jaxtok.cli train --config "
                                   "configs/x.py --workdir /shared/run --config.seed=1")
