"""tokenize_folder (with a stand-in encoder): resolutions, bad files and their budget, GIF /
BMP / TIFF, outputs; and run_batches' compile line and progress bar."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxtok.data import pipeline, tokens
from jaxtok.data.tokens import TokenSource

META = dict(image_size=16, codebook_size=32, tokenizer_config={"name": "stand-in"})


def encode(images_BHWC: np.ndarray) -> np.ndarray:
  """A stand-in tokenizer with factor 4: the top-left red value of each 4x4 patch // 8."""
  return (images_BHWC[:, ::4, ::4, 0] // 8).astype(np.int32)


def _write(folder, name: str, hw=(20, 24), fmt: str | None = None, seed: int = 0):
  path = folder / name
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.random.default_rng(seed).integers(0, 256, (*hw, 3), np.uint8)
  Image.fromarray(image).save(path, fmt)
  return image


def test_fixed_resolution_gives_one_token_grid(tmp_path):
  images, out = tmp_path / "images", tmp_path / "tokens"
  for i, hw in enumerate([(20, 24), (37, 50), (64, 40)]):  # any sizes: resized, then cropped
    _write(images, f"{i}.png", hw, seed=i)
  meta = tokens.tokenize_folder(encode, str(images), str(out), resolution=32, **META)
  assert meta["token_shape"] == [8, 8] and meta["image_size"] == 32
  assert meta["resolution"] == 32 and len(TokenSource(str(out))) == 3
  assert sorted(p.name for p in out.iterdir()) == ["metadata.json", tokens.shard_name(0, 1)]
  meta = tokens.tokenize_folder(encode, str(images), str(out), resolution="train",
                                num_shards=2, **META)
  assert meta["token_shape"] == [4, 4] and meta["image_size"] == 16
  assert sorted(p.name for p in out.iterdir()) == [  # no .tmp, no shard of the earlier run
      "metadata.json", tokens.shard_name(0, 2), tokens.shard_name(1, 2)]


def test_native_resolution_is_refused_with_the_reason(tmp_path):
  with pytest.raises(ValueError, match="'native' cannot make token shards: every record"):
    tokens.tokenize_folder(encode, str(tmp_path), str(tmp_path / "o"), resolution="native",
                           **META)
  with pytest.raises(ValueError, match="a side N >= 1 such as 256; got '0'"):
    tokens.parse_resolution("0")


def test_gif_bmp_and_tiff_are_tokenized(tmp_path):
  rng = np.random.default_rng(0)
  frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)) for _ in range(3)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
  bmp = _write(tmp_path, "b.bmp", (16, 16))
  tif = _write(tmp_path, "c.TIFF", (16, 16), seed=1)
  _write(tmp_path, "d.tif", (16, 16), seed=2)
  meta = tokens.tokenize_folder(encode, str(tmp_path), str(tmp_path / "out"), **META)
  assert meta["keys"] == ["anim.gif", "b.bmp", "c.TIFF", "d.tif"] and not meta["skipped"]
  source = TokenSource(str(tmp_path / "out"))
  np.testing.assert_array_equal(source[1], encode(bmp[None])[0])
  np.testing.assert_array_equal(source[2], encode(tif[None])[0])
  first = np.asarray(Image.open(tmp_path / "anim.gif").convert("RGB"))  # frame 0
  np.testing.assert_array_equal(source[0], encode(first[None])[0])


def _with_bad_files(folder):
  for i in range(4):
    _write(folder, f"{i}.png", seed=i)
  good = (folder / "0.png").read_bytes()
  (folder / "empty.jpg").write_bytes(b"")
  (folder / "truncated.png").write_bytes(good[:len(good) // 2])


def test_bad_files_within_budget_are_listed_with_reasons(tmp_path):
  _with_bad_files(tmp_path)
  (tmp_path / "photo.HEIC").write_bytes(b"x")  # not read, but counted
  meta = tokens.tokenize_folder(encode, str(tmp_path), str(tmp_path / "out"), max_skipped=2,
                                batch_size=3, **META)
  assert meta["keys"] == ["0.png", "1.png", "2.png", "3.png"]
  assert meta["skipped"]["empty.jpg"] == "ValueError: empty file (0 bytes)"
  assert "truncated" in meta["skipped"]["truncated.png"]
  assert meta["ignored"] == {".heic": 1}
  listed = pipeline.describe_skipped(meta["skipped"], meta["ignored"]).splitlines()
  assert listed[0] == "skipped 2 files:" and listed[1].startswith("  empty.jpg: ValueError")
  assert listed[3] == ("ignored 1 file whose extension is not an image format read here: "
                       ".heic (1)")
  assert pipeline.describe_skipped({}) == "skipped 0 files"


def test_past_budget_is_a_value_error_and_keeps_the_old_output(tmp_path):
  images, out = tmp_path / "images", tmp_path / "out"
  _with_bad_files(images)
  (images / "empty.jpg").rename(tmp_path / "aside.jpg")
  tokens.tokenize_folder(encode, str(images), str(out), max_skipped=1, **META)
  before = (out / "metadata.json").read_text()
  (tmp_path / "aside.jpg").rename(images / "empty.jpg")
  with pytest.raises(pipeline.BadDataError, match=r"2 distinct files .* max_skipped=1 allows "
                     r"\(1\).* empty.jpg: ValueError: empty file") as e:
    tokens.tokenize_folder(encode, str(images), str(out), max_skipped=1, batch_size=2, **META)
  assert isinstance(e.value, ValueError)  # the CLI reports ValueErrors in one line
  assert (out / "metadata.json").read_text() == before
  assert sorted(p.name for p in out.iterdir()) == ["metadata.json", tokens.shard_name(0, 1)]


def test_folders_without_images_and_bad_outputs_are_named(tmp_path):
  (tmp_path / "notes.txt").write_text("x")
  (tmp_path / "photo.heic").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"no image files under folder .*'\.gif'.*; found 2 "
                     r"files: \.heic \(1\), \.txt \(1\)"):
    tokens.tokenize_folder(encode, str(tmp_path), str(tmp_path / "out"), **META)
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "a.png").write_bytes(b"")
  (bad / "b.gif").write_bytes(b"GIF89a")
  with pytest.raises(ValueError, match="none of the 2 files of .* could be read"):
    tokens.tokenize_folder(encode, str(bad), str(tmp_path / "out"), max_skipped=5, **META)
  _write(bad, "c.png")
  with pytest.raises(ValueError, match=r"out must be a folder; .*notes.txt' is an existing file"):
    tokens.tokenize_folder(encode, str(bad), str(tmp_path / "notes.txt"), **META)
  with pytest.raises(ValueError, match="cannot create the output folder"):
    tokens.tokenize_folder(encode, str(bad), str(tmp_path / "notes.txt" / "sub"), **META)


def test_run_batches_compiles_once_outside_the_progress_bar(capsys):
  seen = []

  def fn(images):
    seen.append(images.shape)
    return images[:, 0, 0, 0]

  skipped = {"bad.png": "ValueError: no"}
  batches = pipeline.batch_by_shape(
      ((str(i), np.full((4, 6, 3), i, np.uint8)) for i in range(5)), batch_size=2)
  results = list(pipeline.run_batches(fn, batches, total=6, skipped=skipped, desc="tokenize",
                                      progress=True, pad_to=2))
  assert seen == [(2, 4, 6, 3)] * 3  # the last batch of 1 is padded: one shape, one compile
  assert [k for keys, _, _ in results for k in keys] == ["0", "1", "2", "3", "4"]
  np.testing.assert_array_equal(results[-1][2], [4])  # padding cut off again
  captured = capsys.readouterr()
  assert captured.out.count("compiling") == 1
  assert captured.out.startswith("tokenize: compiling for 4x6 images (the first batch) ...")
  assert "6/6" in captured.err and "img" in captured.err  # the bar, on stderr, skips included
  list(pipeline.run_batches(fn, pipeline.batch_by_shape([("a", np.zeros((4, 6, 3)))], 2),
                            total=1, skipped={}, desc="x"))
  assert capsys.readouterr() == ("", "")  # progress=False: silent


def test_metadata_is_valid_json_with_the_skipped_files(tmp_path):
  _with_bad_files(tmp_path)
  tokens.tokenize_folder(encode, str(tmp_path), str(tmp_path / "out"), max_skipped=0.5, **META)
  meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
  assert sorted(meta["skipped"]) == ["empty.jpg", "truncated.png"] and meta["num_records"] == 4


def test_out_of_device_memory_says_what_to_lower():
  def fails_with(message):
    def fn(images):
      raise RuntimeError(message)
    return fn

  def run(fn, hw):
    batches = pipeline.batch_by_shape([("a", np.zeros((*hw, 3), np.uint8))], 1)
    return list(pipeline.run_batches(fn, batches, total=1, skipped={}, desc="reconstruct"))

  oom = fails_with("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 9.1GiB.\n...")
  with pytest.raises(ValueError, match=r"a batch of 1 images of 3000x4000 ran out of device "
                     r"memory \(RESOURCE_EXHAUSTED: Out of memory .*\); lower the resolution"):
    run(oom, (3000, 4000))
  with pytest.raises(RuntimeError, match="^other$"):  # other errors pass through unchanged
    run(fails_with("other"), (4, 4))
