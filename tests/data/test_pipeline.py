"""Transforms, and the Grain pipeline: determinism, resume, shards, workers, bad files."""

import contextlib
import logging
import signal

import numpy as np
import pytest
from PIL import Image

from jaxtok.data import pipeline, samples, sources, transforms


@contextlib.contextmanager
def deadline(seconds: float):
  """Fails the test instead of letting it hang (SIGALRM interrupts a blocked main thread)."""

  def fail(*_):
    raise TimeoutError(f"no answer within {seconds} s: the pipeline hangs")

  previous = signal.signal(signal.SIGALRM, fail)
  signal.setitimer(signal.ITIMER_REAL, seconds)
  try:
    yield
  finally:
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def _position_image(h: int, w: int) -> np.ndarray:
  """Pixel (r, c) holds (r, c, 7): a crop shows where it was taken."""
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  return np.stack([rows, cols, np.full_like(rows, 7)], -1).astype(np.uint8)


def test_resize_shorter_side():
  landscape = np.zeros((20, 40, 3), np.uint8)
  assert transforms.resize_shorter_side(landscape, 10).shape == (10, 20, 3)
  assert transforms.resize_shorter_side(np.zeros((30, 20, 3), np.uint8), 16).shape == (24, 16, 3)
  assert transforms.resize_shorter_side(np.zeros((5, 7, 3), np.uint8), 10).shape == (10, 14, 3)
  assert transforms.resize_shorter_side(landscape, 20) is landscape
  flat = np.full((20, 40, 3), 90, np.uint8)  # resampling a flat image keeps it flat
  np.testing.assert_array_equal(transforms.resize_shorter_side(flat, 10), 90)


def test_center_crop_is_exact():
  image = _position_image(6, 9)
  np.testing.assert_array_equal(transforms.center_crop(image, 4), image[1:5, 2:6])
  np.testing.assert_array_equal(transforms.eval_transform(image, 6), image[:, 1:7])
  with pytest.raises(ValueError, match="at least 10x10"):
    transforms.center_crop(image, 10)


def test_random_crop_in_bounds_covers_all_offsets_and_flip_mirrors():
  image = _position_image(6, 9)
  offsets, flips = set(), set()
  for seed in range(200):
    rng = np.random.default_rng(seed)
    crop = transforms.random_crop(image, 4, rng)
    top, left = int(crop[0, 0, 0]), int(crop[0, 0, 1])
    np.testing.assert_array_equal(crop, image[top:top + 4, left:left + 4])
    offsets.add((top, left))
    flipped = transforms.random_flip(crop, rng)
    flips.add(np.array_equal(flipped, crop[:, ::-1]))
    assert np.array_equal(flipped, crop) or np.array_equal(flipped, crop[:, ::-1])
  assert offsets == {(t, l) for t in range(3) for l in range(6)} and flips == {True, False}


class IndexSource:
  """n flat images whose pixels all equal their index: batches show which records they hold."""

  def __init__(self, n: int, size: int = 8):
    self.n, self.size = n, size

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"key": f"index/{i}", "image": np.full((self.size, self.size + 3, 3), i, np.uint8)}


def _ids(batch) -> list[int]:
  return [int(x) for x in batch["image"][:, 0, 0, 0]]


def _take(it, n: int) -> list[np.ndarray]:
  return [next(it)["image"] for _ in range(n)]


KW = dict(image_size=8, batch_size=4, shard_index=0, shard_count=1)


def test_batches_shape_and_seeded_determinism():
  source = IndexSource(10)
  first = _take(iter(pipeline.make_pipeline(source, seed=3, train=True, **KW)), 5)
  assert first[0].shape == (4, 8, 8, 3) and first[0].dtype == np.uint8
  again = _take(iter(pipeline.make_pipeline(source, seed=3, train=True, **KW)), 5)
  other = _take(iter(pipeline.make_pipeline(source, seed=4, train=True, **KW)), 5)
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other))
  # Each epoch holds every record once (10 records, 20 images in 5 batches: two epochs).
  ids = np.concatenate(first)[:, 0, 0, 0]
  assert sorted(ids[:10]) == list(range(10)) and sorted(ids[10:]) == list(range(10))


def test_exact_resume_from_saved_state():
  ds = pipeline.make_pipeline(samples.SampleCrops(count=12, size=12, seed=0), seed=0,
                              train=True, **KW)
  it = iter(ds)
  _take(it, 3)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = iter(ds)
  resumed.set_state(state)
  for a, b in zip(expected, _take(resumed, 3)):
    np.testing.assert_array_equal(a, b)


def test_shards_are_disjoint_and_complete():
  source = IndexSource(16)
  kw = dict(image_size=8, batch_size=8, seed=0)
  epoch = [_ids(next(iter(pipeline.make_pipeline(source, train=True, shard_index=p,
                                                 shard_count=2, **kw)))) for p in range(2)]
  assert set(epoch[0]).isdisjoint(epoch[1]) and sorted(epoch[0] + epoch[1]) == list(range(16))
  held = [[i for b in pipeline.make_pipeline(source, train=False, shard_index=p, shard_count=3,
                                             **kw) for i in _ids(b)] for p in range(3)]
  assert sorted(held[0] + held[1] + held[2]) == list(range(16))
  assert all(set(held[p]).isdisjoint(held[q]) for p in range(3) for q in range(p))
  with pytest.raises(ValueError, match="shard_index must be in"):
    pipeline.make_pipeline(source, train=False, shard_index=2, shard_count=2, **kw)


def _write_folder(root, n_good: int, bad: dict[str, bytes]) -> list[str]:
  rng = np.random.default_rng(0)
  for i in range(n_good):
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), np.uint8)).save(root / f"good{i:02d}.png")
  noisy = root / "good00.png"
  content = {"truncated.png": noisy.read_bytes()[:200], **bad}
  for name, data in content.items():
    (root / name).write_bytes(data)
  return sorted(str(root / name) for name in content)


BAD = {"empty.jpg": b"", "corrupt.jpg": b"\xff\xd8\xff\xe0" + bytes(300),
       "text.webp": b"just some words"}


def test_bad_files_are_skipped_counted_and_logged(tmp_path, caplog):
  bad = _write_folder(tmp_path, 6, BAD)
  source = sources.FolderSource(str(tmp_path))
  skips = pipeline.SkipLog()
  with caplog.at_level(logging.WARNING, "jaxtok.data.pipeline"), deadline(60):
    eval_images = [b["image"] for b in pipeline.make_pipeline(
        source, seed=0, train=False, max_skipped=4, skip_log=skips, **KW)]
    assert sum(len(b) for b in eval_images) == 6 and sorted(skips.skipped) == bad
    train_skips = pipeline.SkipLog()
    it = iter(pipeline.make_pipeline(source, seed=0, train=True, max_skipped=4,
                                     skip_log=train_skips, **KW))
    _take(it, 8)  # 32 images: over 3 epochs of 10 records
  assert sorted(train_skips.skipped) == bad  # distinct files, not occurrences
  for path in bad:
    assert caplog.text.count(path) == 2  # once per pipeline, not once per epoch
  assert "empty file" in skips.skipped[str(tmp_path / "empty.jpg")]


def test_past_budget_or_all_bad_raises_instead_of_hanging(tmp_path):
  _write_folder(tmp_path, 6, BAD)
  source = sources.FolderSource(str(tmp_path))
  with deadline(60), pytest.raises(pipeline.BadDataError, match=r"max_skipped=0\.2 allows \(2\)"):
    _take(iter(pipeline.make_pipeline(source, seed=0, train=True, max_skipped=0.2, **KW)), 50)
  (tmp_path / "only_bad").mkdir()
  for name, data in BAD.items():
    (tmp_path / "only_bad" / name).write_bytes(data)
  only_bad = sources.FolderSource(str(tmp_path / "only_bad"))
  with deadline(60), pytest.raises(pipeline.BadDataError, match="none of the 3 records") as e:
    next(iter(pipeline.make_pipeline(only_bad, seed=0, train=True, max_skipped=100, **KW)))
  assert isinstance(e.value, ValueError)  # `jaxtok train` reports ValueErrors in one line


def test_empty_folder_fails_fast(tmp_path):
  (tmp_path / "nested").mkdir()
  with deadline(10), pytest.raises(ValueError, match=r"no image files under folder .*'\.jpg'"):
    pipeline.make_pipeline(sources.FolderSource(str(tmp_path)), seed=0, train=True, **KW)


def test_sample_crops_train_and_heldout_splits():
  train = samples.SampleCrops(count=6, size=16, seed=0)
  held = samples.SampleCrops(count=2, size=16, seed=0, split="eval")
  batch = next(iter(pipeline.make_pipeline(held, image_size=16, batch_size=2, seed=0,
                                           train=False, shard_index=0, shard_count=1)))
  np.testing.assert_array_equal(batch["image"], held.crops)  # eval: center crop of 16 = all
  assert train[0]["key"] == "samples/train/0" and not np.array_equal(train.crops[:2], held.crops)


@pytest.mark.slow  # two spawned workers each import grain and jax: several seconds
def test_worker_processes_give_the_same_batches(tmp_path):
  _write_folder(tmp_path, 9, BAD)  # bad files included: markers cross process boundaries
  source = sources.FolderSource(str(tmp_path))
  kw = dict(seed=1, train=True, max_skipped=4, **KW)
  expected = _take(iter(pipeline.make_pipeline(source, num_workers=0, **kw)), 7)
  with deadline(120):
    it = iter(pipeline.make_pipeline(source, num_workers=2, **kw))
    got = _take(it, 4)
    state = it.get_state()
    got += _take(it, 3)
    it.set_state(state)  # rewinds the workers too
    rewound = _take(it, 3)
    it.close()
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(expected[4:], rewound):
    np.testing.assert_array_equal(a, b)
