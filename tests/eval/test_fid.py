"""FID against a direct SciPy computation and its properties, statistics files, Inception
Score and precision/recall on toy sets with known answers."""

import json

import numpy as np
import pytest
import scipy.linalg

from jaxtok.eval import fid, scores


def _scipy_fid(x, y):
  """The TTUR / pytorch-fid formula: scipy's sqrtm of the product."""
  mu1, mu2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


@pytest.fixture(scope="module")
def sets():
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(16, 16))
  x = rng.normal(size=(400, 16)) @ mix
  y = rng.normal(size=(300, 16)) @ (mix + 0.3 * rng.normal(size=(16, 16))) + 0.5
  return x, y


def test_fid_matches_scipy_and_is_a_distance(sets):
  x, y = sets
  value = fid.fid_from_features(x, y)
  assert value == pytest.approx(_scipy_fid(x, y), rel=1e-9)
  assert value > 1.0
  assert fid.fid_from_features(y, x) == pytest.approx(value, rel=1e-9)  # symmetric
  assert fid.fid_from_features(x[::-1], y[np.random.default_rng(1).permutation(300)]) == (
      pytest.approx(value, rel=1e-9))  # order of the images does not matter
  assert fid.fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fid_is_stable_for_rank_deficient_covariances():
  # 10 samples in 64 dimensions: covariances of rank 9. The exact value for S1 = S2 = S is
  # |mu1 - mu2|^2 (the trace terms cancel), whatever the rank.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 64))
  shift = np.zeros(64)
  shift[3] = 2.0
  assert fid.fid_from_features(x, x + shift) == pytest.approx(4.0, rel=1e-9)
  assert np.isfinite(fid.fid_from_features(x, rng.normal(size=(12, 64))))


def test_stats_files_round_trip_and_foreign_layouts(tmp_path, sets):
  x, _ = sets
  mu, sigma = fid.feature_stats(x)
  path = fid.save_stats(str(tmp_path / "a.npz"), mu, sigma, protocol={"num_images": 400})
  loaded = fid.load_stats(path)
  np.testing.assert_array_equal(loaded["mu"], mu)
  np.testing.assert_array_equal(loaded["sigma"], sigma)
  assert loaded["protocol"] == {"num_images": 400}
  # An ADM evaluator reference batch: arr_0 images, mu/sigma, spatial mu_s/sigma_s.
  images = np.zeros((2, 8, 8, 3), np.uint8)
  np.savez(tmp_path / "adm.npz", arr_0=images, mu=mu.astype(np.float32), sigma=sigma,
           mu_s=mu[:4], sigma_s=sigma[:4, :4])
  adm = fid.load_stats(str(tmp_path / "adm.npz"))
  assert adm["mu"].dtype == np.float64 and adm["images"].shape == (2, 8, 8, 3)
  assert "mu_s" in adm and "protocol" not in adm
  np.savez(tmp_path / "bad.npz", mean=mu)
  with pytest.raises(ValueError, match=r"lacks \['mu', 'sigma'\]"):
    fid.load_stats(str(tmp_path / "bad.npz"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    fid.load_stats(str(tmp_path / "none.npz"))
  with pytest.raises(ValueError, match="statistics 2 must be"):
    fid.frechet_distance(mu, sigma, mu[:3], sigma)
  assert json.loads(str(np.load(path)["protocol"])) == {"num_images": 400}


def test_inception_score_known_values():
  # Every image equally unsure (uniform p(y|x)): IS 1. Each image certain of its own class,
  # classes uniform over the split: IS = the number of classes in a split.
  assert scores.inception_score(np.zeros((40, 1008)))[0] == pytest.approx(1.0)
  confident = np.full((40, 8), -1e4)
  confident[np.arange(40), np.arange(40) % 8] = 0.0
  mean, std = scores.inception_score(confident, splits=5)
  assert mean == pytest.approx(8.0, rel=1e-6) and std == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(ValueError, match="N >= splits=10"):
    scores.inception_score(np.zeros((5, 8)))


def test_precision_recall_on_toy_sets():
  # Real: a 10x10 integer grid (squared distances exact in f32). Fake: its first 5 rows, and
  # the same 5 rows moved far away. Precision: the near half sits on real points, the far half
  # in no real ball -> 1/2. Recall: a fake ball's squared radius is 1 (its 3rd neighbour: left,
  # right, the row beside) or 2 at the corners, so it covers the real rows 0-4 and row 5
  # (squared distance 1 from row 4), not rows 6-9 -> 6/10.
  g = np.stack(np.meshgrid(np.arange(10), np.arange(10)), -1).reshape(-1, 2).astype(float)
  near = g[:50]
  out = scores.precision_recall(g, np.concatenate([near, near + 100.0]), k=3, block=32)
  assert out == {"precision": 0.5, "recall": 0.6}
  same = scores.precision_recall(g, g, k=3, block=64)
  assert same == {"precision": 1.0, "recall": 1.0}
  radii = scores.manifold_radii(np.array([[0.0], [1.0], [3.0], [7.0]]), k=1)
  np.testing.assert_allclose(radii, [1.0, 1.0, 4.0, 16.0])  # squared distance to the nearest


def test_few_images_path_equals_the_statistics_path():
  # Fewer images than dimensions: fid_from_features works on the N1 x N2 cross matrix;
  # frechet_distance of the same sets' statistics works on D x D matrices.
  rng = np.random.default_rng(3)
  x, y = rng.normal(size=(12, 40)), rng.normal(size=(9, 40)) * 1.5 + 0.2
  from_stats = fid.frechet_distance(*fid.feature_stats(x), *fid.feature_stats(y))
  assert fid.fid_from_features(x, y) == pytest.approx(from_stats, rel=1e-8)
  assert from_stats == pytest.approx(_scipy_fid(x, y), rel=1e-6)
  y_stats = fid.feature_stats(y)
  assert fid.fid_against_stats(x, *y_stats) == pytest.approx(from_stats, rel=1e-8)
  many = rng.normal(size=(50, 40))  # more images than dimensions: the D x D path
  assert fid.fid_against_stats(many, *y_stats) == pytest.approx(
      fid.frechet_distance(*fid.feature_stats(many), *y_stats), rel=1e-12)
