"""`jaxtok demo --quick` end to end on the real trainers: stopped by SIGTERM in part 1 it
exports nothing and goes no further; run again it resumes, writes what the README promises
with measured figures only; a third run trains nothing and reports the same figures."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image

import jaxtok
from jaxtok import demo
from jaxtok.train.metrics import read_jsonl
from tests.train.conftest import REPO, subprocess_env


def _stop_during_part_one(workdir) -> str:
  """Runs the real CLI, sends SIGTERM once part 1's training started; returns stdout."""
  proc = subprocess.Popen([sys.executable, "-m", "jaxtok.cli", "demo", "--quick", "--workdir",
                           str(workdir)], env=subprocess_env(), cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  deadline = time.time() + 240
  seen = ""
  while time.time() < deadline and "training: started" not in seen:
    line = proc.stderr.readline()
    if not line:
      break
    seen += line
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=240)
  assert proc.returncode == 0, (seen + err)[-3000:]
  return out


def test_quick_demo_stops_resumes_and_reports_only_what_it_measured(tmp_path, capsys):
  out = _stop_during_part_one(tmp_path)
  assert "demo stopped:" in out and "run the demo again to resume" in out, out
  assert not (tmp_path / "tokenizer" / "export").exists()  # nothing half-trained exported
  assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "quantizers").exists()

  results = demo.run(workdir=str(tmp_path), quick=True)
  assert "resumed from step" in capsys.readouterr().err
  for name in ("metrics.json", "recon.png", "samples.png", "samples.npz",
               "quantizers/metrics.json", "quantizers/recon.png"):
    assert (tmp_path / name).is_file(), name
  tokenizer = json.loads((tmp_path / "metrics.json").read_text())
  assert tokenizer["step"] == 8 and np.isfinite(tokenizer["psnr"]) and tokenizer["usage"] > 0
  compared = json.loads((tmp_path / "quantizers" / "metrics.json").read_text())
  assert set(compared) == {"vq", "fsq", "lfq", "rvq"} and compared == results["quantizers"]
  for name, r in compared.items():
    assert abs(r["bits_per_token"] - 10.0) < 0.05, (name, r)  # FSQ 8*5*5*5: 9.97
    assert 0.0 < r["heldout_usage"] <= 1.0 and r["heldout_perplexity"] >= 1.0
    assert np.isfinite(r["heldout_psnr"])
  grid = Image.open(tmp_path / "quantizers" / "recon.png")
  assert grid.size == (5 * demo.HELDOUT_SIDE, demo.HELDOUT_SIDE)
  samples = np.load(tmp_path / "samples.npz")["tokens"]
  loaded = jaxtok.load(str(tmp_path / "tokenizer" / "export"))
  assert samples.dtype == np.int32 and samples.min() >= 0
  assert samples.max() < loaded.model.quantizer.codebook_size
  assert results["generator"]["step"] == 8 and np.isfinite(results["generator"]["loss"])

  # A rerun finds every run finished: nothing trains again, the same figures are reported.
  again = demo.run(workdir=str(tmp_path), quick=True)
  assert again["tokenizer"] == results["tokenizer"]
  assert json.loads((tmp_path / "metrics.json").read_text()) == tokenizer
  assert again["quantizers"] == results["quantizers"]
  assert "resumed from step 8 " in capsys.readouterr().err
  rows = read_jsonl(tmp_path / "tokenizer" / "metrics.jsonl")
  for split in ("train", "eval"):  # one row per step and split, in order, none repeated
    steps = [r["step"] for r in rows if r["split"] == split]
    assert steps == sorted(set(steps)) and steps[-1] == 8, (split, steps)
