"""tools/aot_compile.py and tools/bench/train_step.py run as scripts, in subprocesses."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
AOT = ROOT / "tools" / "aot_compile.py"
BENCH = ROOT / "tools" / "bench" / "train_step.py"
TINY = "configs/demo/tokenizer.py:tiny"


def run(script: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=240)


def memory_figure(stdout: str, name: str) -> int:
  match = re.search(rf"^\s+{name}\s+([\d,]+) bytes", stdout, re.MULTILINE)
  assert match, f"no {name!r} line in:\n{stdout}"
  return int(match.group(1).replace(",", ""))


def test_aot_compile_prints_memory_and_sharding_of_a_fake_8_device_mesh():
  result = run(AOT, "--config", TINY, "--devices", "8", "--mesh", "2,2,2",
               "--config.train.batch_size=16")
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert "mesh: {'data': 2, 'fsdp': 2, 'tensor': 2} = 8 of 8 cpu devices" in out
  # The override reached the step: 16 images split over data x fsdp = 4.
  assert "batch: 16 x 16x16x3 uint8 (per device (4, 16, 16, 3))" in out
  for name in ("argument", "output", "temp"):
    assert memory_figure(out, name) > 0
  # The donated state aliases the outputs; the peak adds the temporaries to the arguments.
  assert memory_figure(out, "alias") > 0
  assert memory_figure(out, "peak estimate") >= (memory_figure(out, "argument")
                                                 + memory_figure(out, "temp"))
  # Kernels whose dims divide the mesh axes are split over fsdp and tensor.
  assert re.search(r"conv\S*/kernel\s+\(3, 3, 32, 32\)\s+P\(None, None, 'fsdp', 'tensor'\)",
                   out)
  params = re.search(r"^params\s+\d+\s+([\d,]+)", out, re.MULTILINE)
  assert params and int(params.group(1).replace(",", "")) > 0


@pytest.mark.parametrize("args, message", [
    (["--mesh", "3,1,1"], "must be divisible by data x fsdp = 3"),
    (["--mesh", "4,4,1"], "needs 16 devices; 8 are available"),
    (["--mesh", "2,2"], "--mesh must be three comma-separated sizes"),
    (["--mesh", "2,2,2", "--config.train.nope=1"], "config has no field 'train.nope'"),
])
def test_aot_compile_bad_mesh_or_config_is_a_one_line_error(args, message):
  result = run(AOT, "--config", TINY, "--devices", "8", *args)
  assert result.returncode == 1
  assert message in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert result.stderr.startswith("aot_compile.py: error:")


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="libtpu installed")
def test_aot_compile_topology_without_libtpu_says_what_is_missing():
  result = run(AOT, "--config", TINY, "--mesh", "2,2,2", "--topology", "v5e:2x2")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [
      "aot_compile.py: --topology v5e:2x2 needs libtpu (pip install 'jax[tpu]'), which is not "
      "installed; use --devices N to compile for fake CPU devices"]


def test_train_step_bench_cpu_mode_prints_a_row_and_writes_results(tmp_path):
  out = tmp_path / "bench.md"
  result = run(BENCH, "--only", "tokenizer-l1", "--steps", "2", "--warmup", "1",
               "--out", str(out))
  assert result.returncode == 0, result.stderr
  rows = [line for line in result.stdout.splitlines() if line.startswith("| tokenizer-l1 |")]
  assert len(rows) == 1, result.stdout
  cells = [c.strip() for c in rows[0].strip("|").split("|")]
  assert cells[1].endswith("L1 + VQ") and cells[2] == "4" and cells[3] == "bf16"
  assert float(cells[4]) > 0 and float(cells[5]) > 0  # time (ms), images/s
  assert "reduced sizes" in result.stdout
  assert rows[0] in out.read_text()
  data = json.loads(out.with_suffix(".json").read_text())
  assert data["device"].startswith("cpu") and data["jax"]
  assert [r["case"] for r in data["rows"]] == ["tokenizer-l1"]


def test_roofline_tiny_prints_xla_and_ideal_costs_and_writes_a_section(tmp_path):
  out = tmp_path / "roofline.md"
  out.write_text("# Roofline\n\n## before\n\nold table\n\n## notes\n\nkept\n")
  result = run(ROOT / "tools" / "bench" / "roofline.py", "--tiny", "--only", "gpt_decode",
               "--out", str(out), "--section", "before")
  assert result.returncode == 0, result.stderr
  rows = [line for line in result.stdout.splitlines() if line.startswith("| GPT decode step |")]
  assert len(rows) == 1, result.stdout
  cells = [c.strip() for c in rows[0].strip("|").split("|")]
  xla_flops, ideal_flops, xla_bytes, ideal_bytes = map(float, (cells[2], cells[3], cells[5],
                                                               cells[6]))
  # The ideal counts only matmul FLOPs: XLA's figure (elementwise work too) is at least it.
  assert float(cells[4]) >= 0.99 and float(cells[7]) > 0 and ideal_bytes > 0
  assert xla_bytes >= ideal_bytes and xla_flops >= ideal_flops
  assert cells[11] == "ok" or cells[11].startswith("waste:")
  text = out.read_text()
  assert "old table" not in text and rows[0].rsplit("[", 1)[0].rstrip() in text  # replaced
  assert text.index("## before") < text.index("## notes") and "kept" in text


def test_nearest_code_bench_winners_rewrite_the_auto_table(tmp_path):
  spec = importlib.util.spec_from_file_location("bench_nc", ROOT / "tools/bench/nearest_code.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  row = lambda impl, d, ms: {"N": 64, "K": 128, "D": d, "dtype": "f32", "impl": impl,  # noqa
                             "time_ms": ms}
  rows = [row("reference", 8, 0.1), row("xla", 8, 3.0), row("pallas_gpu", 8, 1.0),
          row("mosaic_gpu", 8, 0.5), row("pallas_gpu (sweep)", 8, 0.1),
          row("xla", 256, 1.0), row("pallas_gpu", 256, 2.0)]  # mosaic_gpu failed at D=256
  found = bench.winners(rows, "gpu")
  assert found == {"small_d": "mosaic_gpu", "large_d": "xla"}
  path = tmp_path / "measured.py"
  path.write_text((ROOT / "jaxtok/kernels/nearest_code/measured.py").read_text())
  bench.write_winners(path, found, "gpu", {"device": "gpu: H100", "jax": "0.11.2",
                                           "date": "2026-11-28"})
  namespace = {}
  exec(path.read_text(), namespace)  # pylint: disable=exec-used
  assert namespace["WINNERS"]["gpu"] == found
  assert namespace["WINNERS"]["tpu"] == {"small_d": "pallas_tpu", "large_d": "pallas_tpu"}
  assert "measured on gpu: H100, jax 0.11.2" in path.read_text()
  assert namespace["shape_class"](8) == "small_d"
