"""`jaxtok demo --quick` end to end on the real trainers: every part writes what the README
promises, measured figures only, and a rerun resumes instead of training again."""

import json

import numpy as np
from PIL import Image

import jaxtok
from jaxtok import demo


def test_quick_demo_end_to_end_and_rerun(tmp_path, capsys):
  results = demo.run(workdir=str(tmp_path), quick=True)
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
  capsys.readouterr()
  again = demo.run(workdir=str(tmp_path), quick=True)
  assert again["tokenizer"] == results["tokenizer"]
  assert json.loads((tmp_path / "metrics.json").read_text()) == tokenizer
  assert again["quantizers"] == results["quantizers"]
  assert "resumed from step 8" in capsys.readouterr().err
