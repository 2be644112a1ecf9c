"""Image sets for FID (folders, .npz batches, ArrayRecord shards) and reference statistics,
without the Inception: a stand-in features function counts what it is given."""

import importlib.util
import pathlib

import numpy as np
import pytest
from PIL import Image

from jaxtok.eval import fid, image_sets

_SPEC = importlib.util.spec_from_file_location(
    "make_arrayrecord", pathlib.Path(__file__).parents[2] / "tools" / "make_arrayrecord.py")
make_arrayrecord = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(make_arrayrecord)


def _folder(path, sizes):
  path.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(rng.integers(0, 256, (h, w, 3), np.uint8)).save(path / f"{i}.png")
  return path


def _means(image_set):
  """A stand-in for the Inception: one 3-d 'feature' (the mean colour) per image."""
  batches = list(image_set.batches)
  return {"pool": np.concatenate([b.reshape(len(b), -1, 3).mean(1) for b in batches])}, batches


def test_folders_batch_by_size_or_resize_to_one(tmp_path):
  folder = _folder(tmp_path / "f", [(20, 30), (20, 30), (24, 24), (20, 30)])
  native = image_sets.open_images(str(folder), batch_size=2)
  assert [b.shape for b in native.batches] == [(2, 20, 30, 3), (1, 24, 24, 3), (1, 20, 30, 3)]
  fixed = image_sets.open_images(str(folder), resolution=16, batch_size=3)
  assert [b.shape for b in fixed.batches] == [(3, 16, 16, 3), (1, 16, 16, 3)]
  assert fixed.total == 4 and "central 16x16 crop" in fixed.description


def test_bad_files_are_skipped_within_the_budget_in_order(tmp_path):
  folder = _folder(tmp_path / "f", [(8, 8)] * 5)
  (folder / "2.png").write_bytes(b"not a png")
  skipped = {}
  keys = [f"{i}.png" for i in range(5)]
  read = image_sets.read_files(str(folder), keys, lambda x: x, max_skipped=1, skipped=skipped,
                               threads=3, chunk=2)
  assert [k for k, _ in read] == ["0.png", "1.png", "3.png", "4.png"]
  assert list(skipped) == ["2.png"]
  with pytest.raises(ValueError, match="could not be read"):
    list(image_sets.read_files(str(folder), keys, lambda x: x, max_skipped=0, skipped={}))


def test_npz_and_arrayrecord_sets(tmp_path):
  images = np.random.default_rng(1).integers(0, 256, (5, 8, 8, 3), np.uint8)
  np.savez(tmp_path / "batch.npz", arr_0=images)
  got = np.concatenate(list(image_sets.open_images(str(tmp_path / "batch.npz"),
                                                   batch_size=2).batches))
  np.testing.assert_array_equal(got, images)
  folder = _folder(tmp_path / "g", [(12, 12)] * 3)
  make_arrayrecord.build_shards(str(folder), str(tmp_path / "shards"), num_shards=1)
  pattern = str(tmp_path / "shards" / "train-*.array_record")
  with pytest.raises(ValueError, match="pass a resolution N"):
    image_sets.open_images(pattern)
  shards = image_sets.open_images(pattern, resolution=12, batch_size=2)
  assert [b.shape for b in shards.batches] == [(2, 12, 12, 3), (1, 12, 12, 3)]
  with pytest.raises(FileNotFoundError, match="'nowhere' does not exist"):
    image_sets.open_images("nowhere")
  np.savez(tmp_path / "stats.npz", mu=np.zeros(3), sigma=np.eye(3))
  with pytest.raises(ValueError, match="a stats file goes to --ref"):
    image_sets.open_images(str(tmp_path / "stats.npz"))


def test_reference_stats_of_files_and_adm_batches(tmp_path):
  seen = []

  def features_of(image_set):
    feats, batches = _means(image_set)
    seen.append(sum(len(b) for b in batches))
    return feats

  mu, sigma = np.arange(3.0), np.eye(3)
  np.savez(tmp_path / "plain.npz", mu=mu, sigma=sigma)
  plain = image_sets.reference_stats(str(tmp_path / "plain.npz"), features_of, resolution=None,
                                     batch_size=4)
  assert "features" not in plain and seen == []  # a stats file: nothing to extract
  np.testing.assert_array_equal(plain["mu"], mu)
  images = np.random.default_rng(2).integers(0, 256, (6, 8, 8, 3), np.uint8)
  fid.save_stats(str(tmp_path / "adm.npz"), mu, sigma, arr_0=images)
  adm = image_sets.reference_stats(str(tmp_path / "adm.npz"), features_of, resolution=None,
                                   batch_size=4)
  assert seen == [6] and adm["features"].shape == (6, 3)  # arr_0: for precision/recall
  np.testing.assert_array_equal(adm["sigma"], sigma)  # FID still uses the file's statistics
  assert "6 arr_0 images" in adm["description"]
