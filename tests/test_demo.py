"""A shortened `jaxtok demo` end to end: trains, writes metrics.json and recon.png."""

import json

import numpy as np
from PIL import Image

from jaxtok import demo
from jaxtok.quantizers import FSQ, VectorQuantizer


def test_patchify_round_trip():
  x = np.arange(2 * 8 * 12 * 3, dtype=np.float32).reshape(2, 8, 12, 3)
  patches = demo.patchify(x, 4)
  assert patches.shape == (2, 2, 3, 48)
  np.testing.assert_array_equal(patches[0, 0, 1].reshape(4, 4, 3), x[0, :4, 4:8])
  np.testing.assert_array_equal(demo.unpatchify(patches, 4), x)


def test_short_demo_writes_metrics_and_pictures(tmp_path):
  quantizers = {"vq": VectorQuantizer(codebook_size=64, dim=4, use_ema=True,
                                      data_init="kmeans++", restart_threshold=0.05),
                "fsq": FSQ(levels=(4, 4, 4))}
  results = demo.compare_quantizers(str(tmp_path), steps=30, batch_size=8, quantizers=quantizers)
  saved = json.loads((tmp_path / "metrics.json").read_text())
  assert saved == results and set(saved) == {"vq", "fsq"}
  for name, r in saved.items():
    assert r["bits_per_token"] == 6.0
    assert 0.0 < r["heldout_usage"] <= 1.0 and r["heldout_perplexity"] >= 1.0
    # Untrained, the decoder outputs ~0 (mid-grey): 30 steps must already beat that clearly.
    assert r["heldout_psnr"] > 12.0, (name, r)
  grid = Image.open(tmp_path / "recon.png")
  assert grid.size == (3 * demo.HELDOUT_SIDE, demo.HELDOUT_SIDE)


def test_quick_demo_end_to_end(tmp_path):
  """`jaxtok demo --quick`: every part runs and writes what the README promises."""
  import jaxtok

  results = demo.run(workdir=str(tmp_path), quick=True)
  for name in ("metrics.json", "recon.png", "samples.png", "samples.npz",
               "quantizers/metrics.json", "quantizers/recon.png"):
    assert (tmp_path / name).is_file(), name
  tokenizer = json.loads((tmp_path / "metrics.json").read_text())
  assert tokenizer["step"] == 8 and np.isfinite(tokenizer["psnr"]) and tokenizer["usage"] > 0
  assert set(results["quantizers"]) == {"vq", "fsq", "lfq", "rvq"}
  samples = np.load(tmp_path / "samples.npz")["tokens"]
  loaded = jaxtok.load(str(tmp_path / "tokenizer" / "export"))
  assert samples.dtype == np.int32 and samples.min() >= 0
  assert samples.max() < loaded.model.quantizer.codebook_size
