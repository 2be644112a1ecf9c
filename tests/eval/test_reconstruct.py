"""reconstruct() with a stand-in round trip: resolutions, output names, bad files and their
budget, metrics.json on every exit; resolve_resolution against what a model accepts."""

import json

import numpy as np
import pytest
from PIL import Image

from jaxtok.data import images as image_lib
from jaxtok.data import pipeline, transforms
from jaxtok.eval import metrics, reconstruct


def roundtrip(images_BHWC: np.ndarray) -> np.ndarray:
  """A stand-in tokenizer: the image at half contrast (a finite, known PSNR)."""
  return np.asarray(image_lib.to_float(images_BHWC)) * 0.5


def _write(path, hw=(16, 16), seed: int = 0) -> np.ndarray:
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.random.default_rng(seed).integers(0, 256, (*hw, 3), np.uint8)
  Image.fromarray(image).save(path)
  return image


def _run(images, out, **kw):
  kw = {"image_size": 16, "factor": 4, **kw}
  return reconstruct.reconstruct(roundtrip, str(images), str(out), **kw)


def _expected_psnr(crop: np.ndarray) -> float:
  x = crop[None]
  return float(metrics.psnr(roundtrip(x), image_lib.to_float(x))[0])


def test_native_resolution_crops_each_image_to_the_factor_and_measures_there(tmp_path):
  images, out = tmp_path / "images", tmp_path / "out"
  big = _write(images / "big.png", (37, 50))
  small = _write(images / "small.png", (23, 14), seed=1)
  result = _run(images, out, factor=4)
  assert result["resolution"] == "native"
  crops = {"big.png": big[0:36, 1:49], "small.png": small[1:21, 1:13]}  # centered crops
  for key, crop in crops.items():
    h, w = crop.shape[:2]
    assert result["images"][key]["size"] == [h, w]
    picture = np.asarray(Image.open(out / f"{key}.png"))
    assert picture.shape == (h, 2 * w, 3)  # original | reconstruction
    np.testing.assert_array_equal(picture[:, :w], crop)
    assert result["images"][key]["psnr"] == pytest.approx(_expected_psnr(crop), rel=1e-5)
  assert result["images"]["big.png"]["ssim"] is not None
  saved = json.loads((out / "metrics.json").read_text())
  assert saved["images"] == result["images"] and saved["mean_psnr"] == result["mean_psnr"]


def test_fixed_resolutions_resize_then_crop(tmp_path):
  _write(tmp_path / "a.png", (37, 50))
  _write(tmp_path / "b.png", (8, 8), seed=1)  # smaller than the crop: resized up
  result = _run(tmp_path, tmp_path / "n", resolution=24, batch_size=4)
  assert {k: v["size"] for k, v in result["images"].items()} == {"a.png": [24, 24],
                                                                  "b.png": [24, 24]}
  result = _run(tmp_path, tmp_path / "t", resolution="train")
  assert result["resolution"] == "train" and result["images"]["a.png"]["size"] == [16, 16]


def test_tiny_images_get_psnr_without_ssim(tmp_path):
  _write(tmp_path / "tiny.png", (9, 10))
  result = _run(tmp_path, tmp_path / "out", factor=2)
  assert result["images"]["tiny.png"]["size"] == [8, 10]
  assert result["images"]["tiny.png"]["ssim"] is None and result["mean_ssim"] is None
  assert np.isfinite(result["mean_psnr"])


def test_every_input_gets_its_own_output(tmp_path):
  images = tmp_path / "images"
  names = ["a.jpg", "a.png", "sub/a.png", "sub__a.png", "a.png.png"]
  for i, name in enumerate(names):
    _write(images / name, seed=i)
  result = _run(images, tmp_path / "out")
  outputs = [result["images"][n]["output"] for n in names]
  assert outputs == ["a.jpg.png", "a.png.png", "sub/a.png.png", "sub__a.png.png",
                     "a.png.png.png"]
  for name, output in zip(names, outputs):  # each picture holds its own input
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / output))[:, :16],
                                  transforms.decode_image((images / name).read_bytes()))


def _bad_folder(folder, good: int = 3):
  for i in range(good):
    _write(folder / f"{i}.png", seed=i)
  jpeg = folder / "photo.jpg"
  Image.fromarray(_write(folder / "x.png", (64, 64), seed=9)).save(jpeg, "JPEG")
  (folder / "x.png").unlink()
  data = jpeg.read_bytes()
  jpeg.write_bytes(data[:len(data) // 2])  # a truncated JPEG
  (folder / "empty.png").write_bytes(b"")


def test_bad_files_are_skipped_named_and_reported(tmp_path):
  _bad_folder(tmp_path / "images")
  result = _run(tmp_path / "images", tmp_path / "out", max_skipped=2)
  assert sorted(result["images"]) == ["0.png", "1.png", "2.png"]
  assert result["skipped"]["empty.png"] == "ValueError: empty file (0 bytes)"
  assert "truncated" in result["skipped"]["photo.jpg"]
  saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert saved["skipped"] == result["skipped"] and "error" not in saved
  assert saved["ignored"] == {}


def test_past_budget_fails_after_writing_metrics_for_what_was_done(tmp_path):
  _bad_folder(tmp_path / "images")
  with pytest.raises(pipeline.BadDataError, match=r"2 distinct files .* max_skipped=1 allows "
                     r"\(1\).*empty.png: ValueError: empty file") as e:
    _run(tmp_path / "images", tmp_path / "out", max_skipped=1)
  assert isinstance(e.value, ValueError)  # the CLI reports ValueErrors in one line
  saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert sorted(saved["images"]) == ["0.png", "1.png", "2.png"]  # sorted before empty, photo
  assert sorted(saved["skipped"]) == ["empty.png", "photo.jpg"]
  assert saved["error"].startswith("BadDataError: 2 distinct files")
  one = tmp_path / "images" / "empty.png"
  with pytest.raises(ValueError, match="none of the 1 files .* empty file"):
    _run(one, tmp_path / "one")
  assert json.loads((tmp_path / "one" / "metrics.json").read_text())["num_images"] == 0


def test_gif_bmp_and_tiff_are_reconstructed(tmp_path):
  rng = np.random.default_rng(0)
  frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)) for _ in range(2)]
  frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
  for name in ("b.bmp", "c.tif", "d.tiff"):
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(tmp_path / name)
  result = _run(tmp_path, tmp_path / "out")
  assert sorted(result["images"]) == ["anim.gif", "b.bmp", "c.tif", "d.tiff"]
  assert not result["skipped"]


def test_outputs_inside_the_images_folder_are_not_read_back(tmp_path):
  _write(tmp_path / "a.png")
  _run(tmp_path, tmp_path / "recon")
  again = _run(tmp_path, tmp_path / "recon")  # recon/a.png.png is not an input
  assert sorted(again["images"]) == ["a.png"] and again["ignored"] == {}  # nor metrics.json
  with pytest.raises(ValueError, match="out must differ from the images folder"):
    _run(tmp_path, tmp_path)
  with pytest.raises(ValueError, match="is an existing file"):
    _run(tmp_path, tmp_path / "a.png")
  with pytest.raises(FileNotFoundError, match="does not exist"):
    _run(tmp_path / "missing", tmp_path / "o")
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no image files under folder .*; found no files"):
    _run(tmp_path / "empty", tmp_path / "o")


class _Model:
  """The parts of a tokenizer that resolve_resolution reads."""

  def __init__(self, fixed: int | None):
    self.fixed, self.downsample_factor = fixed, 4

  def token_shape(self, hw):
    if hw[0] % 4 or hw[1] % 4 or (self.fixed and tuple(hw) != (self.fixed,) * 2):
      raise ValueError(f"images must be ...; got {hw}")
    return hw[0] // 4, hw[1] // 4


def test_resolve_resolution_follows_what_the_model_accepts():
  assert reconstruct.resolve_resolution(None, _Model(None), 16) == "native"
  assert reconstruct.resolve_resolution(None, _Model(16), 16) == "train"
  assert reconstruct.resolve_resolution(32, _Model(None), 16) == 32
  with pytest.raises(ValueError, match="'native': this _Model takes only some image sizes"):
    reconstruct.resolve_resolution("native", _Model(16), 16)
  with pytest.raises(ValueError, match="resolution 30 does not suit this _Model"):
    reconstruct.resolve_resolution(30, _Model(None), 16)
