"""Image decoding to RGB for every mode, folder and ArrayRecord sources, make_arrayrecord."""

import importlib.util
import io
import logging
import pathlib
import struct
import zlib

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image, ImageOps

from jaxtok.data import pipeline, sources, transforms

_TOOL = pathlib.Path(__file__).resolve().parents[2] / "tools" / "make_arrayrecord.py"


def _load_tool():
  spec = importlib.util.spec_from_file_location("make_arrayrecord", _TOOL)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _png16(samples: np.ndarray, color_type: int) -> bytes:
  """A 16-bit PNG (PIL cannot write 16-bit colour): 0 grey, 2 RGB, 4 grey+alpha, 6 RGBA."""
  h, w = samples.shape[:2]
  raw = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
          + chunk(b"IEND", b""))


def _encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
  buf = io.BytesIO()
  image.save(buf, fmt, **kw)
  return buf.getvalue()


# 16-bit values and their expected 8-bit value round(v * 255 / 65535) = round(v / 257).
V16 = np.array([0, 128, 129, 1000, 32896, 65535], np.uint16)
V8 = np.array([0, 0, 1, 4, 128, 255], np.uint8)
WHITE = 255


def test_l_la_rgba_p_and_cmyk_convert_by_the_documented_rules():
  grey = Image.fromarray(np.array([[0, 77, 255]], np.uint8), "L")
  np.testing.assert_array_equal(transforms.to_rgb(grey)[0], [[0] * 3, [77] * 3, [255] * 3])
  # LA and RGBA: composited on white; alpha 128 of grey 100 -> round(100*a + 255*(1-a)).
  la = Image.fromarray(np.array([[[100, 0], [100, 255], [100, 128]]], np.uint8), "LA")
  mixed = round(100 * 128 / 255 + 255 * 127 / 255)
  np.testing.assert_array_equal(transforms.to_rgb(la)[0], [[WHITE] * 3, [100] * 3, [mixed] * 3])
  rgba = Image.fromarray(np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 51]]],
                                  np.uint8), "RGBA")
  np.testing.assert_array_equal(transforms.to_rgb(rgba)[0],
                                [[10, 20, 30], [WHITE] * 3, [204] * 3])
  cmyk = Image.new("CMYK", (4, 1))
  cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (100, 50, 0, 20)])
  np.testing.assert_array_equal(transforms.to_rgb(cmyk)[0],
                                [[255] * 3, [0, 255, 255], [0] * 3, [143, 189, 235]])


def test_palette_and_rgb_with_and_without_transparent_colour():
  p = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
  p.putpalette([200, 10, 20, 5, 6, 7] + [0] * 762)
  np.testing.assert_array_equal(transforms.decode_image(_encode(p))[0], [[200, 10, 20], [5, 6, 7]])
  p.info["transparency"] = 0
  decoded = transforms.decode_image(_encode(p, transparency=0))
  np.testing.assert_array_equal(decoded[0], [[WHITE] * 3, [5, 6, 7]])
  rgb = Image.fromarray(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8))
  decoded = transforms.decode_image(_encode(rgb, transparency=(1, 2, 3)))  # a tRNS colour
  np.testing.assert_array_equal(decoded[0], [[WHITE] * 3, [4, 5, 6]])


@pytest.mark.parametrize("dtype", ["<u2", ">u2", "int32"])
def test_16_bit_grey_in_memory_is_scaled_by_rounding(dtype):
  image = Image.fromarray(V16[None].astype(dtype))
  assert image.mode == {"<u2": "I;16", ">u2": "I;16B", "int32": "I"}[dtype]
  np.testing.assert_array_equal(transforms.to_rgb(image)[0], np.repeat(V8[:, None], 3, 1))


def test_16_bit_pngs_are_scaled_by_rounding_not_truncated():
  grey = transforms.decode_image(_png16(V16[None], 0))
  np.testing.assert_array_equal(grey[0], np.repeat(V8[:, None], 3, 1))
  rgb16 = np.stack([V16, V16[::-1], np.full_like(V16, 1000)], -1)[None]
  expected = np.stack([V8, V8[::-1], np.full_like(V8, 4)], -1)
  np.testing.assert_array_equal(transforms.decode_image(_png16(rgb16, 2))[0], expected)
  # PIL alone keeps the high byte: 1000 -> 3, where rounding gives 4.
  assert np.asarray(Image.open(io.BytesIO(_png16(rgb16, 2))))[0, 0, 2] == 3
  opaque = np.concatenate([rgb16, np.full(rgb16.shape[:2] + (1,), 65535, np.uint16)], -1)
  np.testing.assert_array_equal(transforms.decode_image(_png16(opaque, 6))[0], expected)
  clear = opaque.copy()
  clear[..., 3] = 0
  np.testing.assert_array_equal(transforms.decode_image(_png16(clear, 6))[0],
                                np.full_like(expected, WHITE))
  la = np.stack([V16, np.full_like(V16, 65535)], -1)[None]
  np.testing.assert_array_equal(transforms.decode_image(_png16(la, 4))[0],
                                np.repeat(V8[:, None], 3, 1))


def test_webp_and_jpeg_decode_to_rgb():
  rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
  webp = transforms.decode_image(_encode(Image.fromarray(rgb), "WEBP", lossless=True))
  np.testing.assert_array_equal(webp, rgb)
  flat = Image.new("CMYK", (8, 8), (0, 0, 0, 255))
  jpeg = transforms.decode_image(_encode(flat, "JPEG", quality=95))
  assert jpeg.shape == (8, 8, 3) and jpeg.dtype == np.uint8 and jpeg.max() <= 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(orientation):
  image = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10)
  exif = image.getexif()
  exif[0x0112] = orientation
  data = _encode(image, exif=exif)
  expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
  np.testing.assert_array_equal(transforms.decode_image(data), expected)


def test_folder_listing_is_recursive_sorted_and_filters_extensions(tmp_path):
  (tmp_path / "b" / "c").mkdir(parents=True)
  for name in ("z.PNG", "a.jpg", "b/c/x.webp", "b/y.jpeg", "notes.txt", "b/c/raw.heic",
               "b/c/t.TIF", "g.gif", "m.bmp", "b/t.tiff"):
    (tmp_path / name).write_bytes(b"x")
  assert sources.list_images(str(tmp_path)) == ["a.jpg", "b/c/t.TIF", "b/c/x.webp", "b/t.tiff",
                                                "b/y.jpeg", "g.gif", "m.bmp", "z.PNG"]
  source = sources.FolderSource(str(tmp_path))
  assert len(source) == 8 and source[2] == {"key": str(tmp_path / "b/c/x.webp"), "bytes": b"x"}


def test_gif_bmp_and_tiff_decode_to_rgb():
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
  for fmt in ("BMP", "TIFF"):
    np.testing.assert_array_equal(transforms.decode_image(_encode(Image.fromarray(rgb), fmt)),
                                  rgb)
  grey16 = transforms.decode_image(_encode(Image.fromarray(V16[None].astype("<u2")), "TIFF"))
  np.testing.assert_array_equal(grey16[0], np.repeat(V8[:, None], 3, 1))
  frames = [Image.fromarray(np.full((4, 4), i, np.uint8), "P") for i in range(3)]
  for frame in frames:
    frame.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * 759)
  buf = io.BytesIO()
  frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], transparency=2)
  np.testing.assert_array_equal(transforms.decode_image(buf.getvalue()),  # the first frame
                                np.full((4, 4, 3), [10, 20, 30], np.uint8))


def test_empty_folder_error_names_folder_and_extensions(tmp_path):
  (tmp_path / "readme.txt").write_text("no images")
  with pytest.raises(ValueError, match=r"no image files under folder .*\.webp"):
    sources.FolderSource(str(tmp_path))
  with pytest.raises(ValueError, match="existing directory"):
    sources.FolderSource(str(tmp_path / "missing"))


def test_eval_split_is_disjoint_complete_and_stable(tmp_path):
  for i in range(40):
    (tmp_path / f"{i:02d}.png").write_bytes(b"x")
  split = dict(eval_fraction=0.25)
  train = sources.list_images(str(tmp_path), split="train", **split)
  held = sources.list_images(str(tmp_path), split="eval", **split)
  assert set(train).isdisjoint(held) and sorted(train + held) == sources.list_images(str(tmp_path))
  assert 2 <= len(held) <= 20  # a hash split: about a quarter
  for i in range(40, 80):  # new files never move old ones across the boundary
    (tmp_path / f"{i:02d}.png").write_bytes(b"x")
  assert set(held) <= set(sources.list_images(str(tmp_path), split="eval", **split))
  with pytest.raises(ValueError, match="eval_fraction > 0"):
    sources.list_images(str(tmp_path), split="eval")


def _folder_with_bad_files(root: pathlib.Path) -> tuple[list[str], list[str]]:
  """Good images of several kinds and four bad files; returns (good, bad) relative paths."""
  rng = np.random.default_rng(1)
  (root / "sub").mkdir()
  good = {"a.png": _encode(Image.fromarray(rng.integers(0, 256, (9, 7, 3), np.uint8))),
          "b.jpg": _encode(Image.fromarray(rng.integers(0, 256, (8, 8), np.uint8), "L"), "JPEG"),
          "sub/c.png": _png16(rng.integers(0, 65536, (5, 6, 3)).astype(np.uint16), 2),
          "sub/d.webp": _encode(Image.fromarray(rng.integers(0, 256, (6, 6, 4), np.uint8)),
                                "WEBP", lossless=True)}
  noisy = _encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), np.uint8)))
  bad = {"empty.jpg": b"", "truncated.png": noisy[:len(noisy) // 2],
         "corrupt.png": noisy[:40] + rng.bytes(400), "sub/text.webp": b"plain text, no image"}
  for name, data in {**good, **bad}.items():
    (root / name).write_bytes(data)
  return sorted(good), sorted(bad)


def test_make_arrayrecord_round_trip_skips_bad_files(tmp_path, caplog):
  folder, out = tmp_path / "images", tmp_path / "shards"
  folder.mkdir()
  good, bad = _folder_with_bad_files(folder)
  tool = _load_tool()
  with caplog.at_level(logging.WARNING):
    result = tool.build_shards(str(folder), str(out), num_shards=2, max_skipped=4, threads=2)
  assert sorted(result["skipped"]) == bad and len(result["train"]) == 2 and not result["eval"]
  for name in bad:
    assert str(folder / name) in caplog.text
  stored = sources.ArrayRecordSource(str(out / "train-*.array_record"))
  assert len(stored) == len(good)
  folder_source = sources.FolderSource(str(folder))
  by_path = {folder_source.paths[i]: folder_source[i] for i in range(len(folder_source))}
  for i, name in enumerate(good):  # shards keep the folder's sorted order
    record = stored[i]
    assert record["meta"]["key"] == name and record["bytes"] == by_path[name]["bytes"]
    np.testing.assert_array_equal(transforms.decode_image(record["bytes"]),
                                  transforms.decode_image(by_path[name]["bytes"]))


def test_make_arrayrecord_budget_and_cli(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  good, bad = _folder_with_bad_files(folder)
  tool = _load_tool()
  with pytest.raises(pipeline.BadDataError, match=r"4 of 8 files .* max_skipped=3"):
    tool.build_shards(str(folder), str(tmp_path / "none"), num_shards=1, max_skipped=3)
  assert not (tmp_path / "none").exists()  # nothing written past the budget
  out = tmp_path / "cli"
  argv = ["--folder", str(folder), "--output", str(out), "--num_shards", "3",
          "--eval_fraction", "0.5", "--max_skipped", "0.5"]
  assert tool.main(argv) == 0
  train = sources.ArrayRecordSource(str(out / "train-*"))
  held = sources.ArrayRecordSource(str(out / "eval-*"))
  keys = [r["meta"]["key"] for s in (train, held) for r in (s[i] for i in range(len(s)))]
  assert sorted(keys) == good
  assert all(sources.in_eval_split(held[i]["meta"]["key"], 0.5) for i in range(len(held)))
  assert tool.main(["--folder", str(tmp_path / "cli"), "--output", str(out)]) == 1  # no images


def test_arrayrecord_source_reports_foreign_records_and_missing_files(tmp_path):
  path = str(tmp_path / "mixed.array_record")
  writer = ArrayRecordWriter(path, "group_size:1")
  writer.write(sources.encode_record(b"img", {"key": "x.png"}))
  writer.write(b"not a jaxtok record")
  writer.close()
  source = sources.ArrayRecordSource(path)
  assert source[0] == {"key": "x.png (record 0)", "bytes": b"img", "meta": {"key": "x.png"}}
  assert "not a jaxtok image record" in source[1]["error"]
  with pytest.raises(ValueError, match="matches none"):
    sources.ArrayRecordSource(str(tmp_path / "nothing-*.array_record"))
