"""The `jaxtok` command: version, help, one-line errors, and train → eval → export →
reconstruct → tokenize end to end on the tiny demo config."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import jaxtok
from jaxtok import cli
from jaxtok.data import transforms
from jaxtok.data.tokens import TokenSource

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "configs/demo/tokenizer.py:tiny"  # a packaged config, found from any directory


def test_version(capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(["--version"])
  assert e.value.code == 0
  assert capsys.readouterr().out.strip() == f"jaxtok {jaxtok.__version__}"


def test_no_command_prints_help(capsys):
  assert cli.main([]) == 0
  out = capsys.readouterr().out
  for command in ("train", "eval", "export", "reconstruct", "tokenize", "demo"):
    assert command in out


@pytest.mark.parametrize("argv, message", [
    (["tokenize", "--model", "m", "--images", "i", "--out", "o", "--shards", "0"],
     "--shards must be >= 1; got 0"),
    (["reconstruct", "--model", "m", "--images", "i", "--out", "o", "--batch-size", "x"],
     "invalid int value: 'x'"),
    (["train", "--workdir", "w"], "the following arguments are required: --config"),
    (["train", "--config", "c.py", "--workdir", "w", "--bogus"], "unrecognized arguments: --bogus"),
    (["export", "--workdir", "w", "--out", "o", "--config.x=1"], "unrecognized arguments"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "missing.py", "--workdir", "w"], "config must be an existing .py file"),
    (["train", "--config", TINY, "--workdir", "w", "--config.train.stepz=1"],
     "config has no field 'train.stepz'"),
    (["export", "--workdir", "/nonexistent/run", "--out", "o"], "no checkpoint under"),
    (["reconstruct", "--model", "/nonexistent/model", "--images", "i", "--out", "o"],
     "is not a jaxtok export"),
])
def test_missing_paths_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_console_script_entry_point():
  out = subprocess.run([sys.executable, "-m", "jaxtok.cli", "--help"], capture_output=True,
                       text=True, check=True).stdout
  assert out.startswith("usage: jaxtok")


def test_train_eval_export_reconstruct_tokenize(tmp_path, capsys):
  run, export, images = tmp_path / "run", tmp_path / "export", tmp_path / "images"
  assert cli.main(["train", "--config", TINY, "--workdir", str(run), "--config.train.steps=2",
                   "--config.eval.every_steps=2", "--config.checkpoint.every_steps=2"]) == 0
  assert cli.main(["eval", "--config", TINY, "--workdir", str(run),
                   "--config.train.steps=2"]) == 0
  assert "psnr" in capsys.readouterr().out
  assert cli.main(["export", "--workdir", str(run), "--out", str(export)]) == 0
  assert json.loads((export / "config.json").read_text())["exported_from"]["step"] == 2

  rng = np.random.default_rng(0)
  (images / "sub").mkdir(parents=True)
  for i in range(3):
    Image.fromarray(rng.integers(0, 256, (20, 24 + i, 3), np.uint8)).save(images / f"{i}.png")
  Image.fromarray(rng.integers(0, 256, (16, 16), np.uint8)).save(images / "sub" / "grey.png")
  (images / "broken.jpg").write_bytes(b"not a jpeg")

  out = tmp_path / "recon"
  assert cli.main(["reconstruct", "--model", str(export), "--images", str(images / "0.png"),
                   "--out", str(out)]) == 0
  metrics = json.loads((out / "metrics.json").read_text())
  assert set(metrics["images"]) == {"0.png"} and np.isfinite(metrics["mean_psnr"])
  assert Image.open(out / "0.png.png").size == (48, 20)  # original | reconstruction, native

  tokens = tmp_path / "tokens"
  assert cli.main(["tokenize", "--model", str(export), "--images", str(images), "--out",
                   str(tokens), "--shards", "2", "--batch-size", "2", "--max-skipped", "1"]) == 0
  source = TokenSource(str(tokens))
  assert len(source) == 4 and source.metadata["skipped"].keys() == {"broken.jpg"}
  loaded = jaxtok.load(str(export))
  image = transforms.eval_transform(np.asarray(Image.open(images / "1.png")), 16)
  want = loaded.encode(image[None])
  assert source.token_shape == tuple(want.shape[1:])
  assert source.codebook_size == loaded.model.quantizer.codebook_size
  np.testing.assert_array_equal(source[1], np.asarray(want[0]))  # keys sorted: 0, 1, 2, sub/grey
  assert all((0 <= source[i]).all() and (source[i] < source.codebook_size).all()
             for i in range(len(source)))


@pytest.fixture(scope="module")
def export_f4(tmp_path_factory):
  """An untrained tiny VQGAN with downsampling factor 4 (trained on 16x16), as exported."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from jaxtok import build, inference
  from jaxtok.configs.demo import tokenizer as tokenizer_config
  from jaxtok.train import checkpoint
  from jaxtok.train import state as state_lib

  config = tokenizer_config.get_config("tiny")
  config.model.config.ch_mult = (1, 2, 2)
  model = build.model(config)
  variables = jax.jit(lambda k: nn.meta.unbox(model.init(
      {"params": k, "quantizer": k}, jnp.zeros((1, 16, 16, 3)))))(state_lib.make_key(0))
  out = tmp_path_factory.mktemp("export_f4")
  return inference.save(str(out), checkpoint.config_to_json(config), dict(variables))


def _noise(path, hw, seed=0, fmt=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  image = np.random.default_rng(seed).integers(0, 256, (*hw, 3), np.uint8)
  Image.fromarray(image).save(path, fmt)
  return image


def test_reconstruct_runs_at_native_resolution_by_default(export_f4, tmp_path, capsys):
  import jax

  from jaxtok.data import images as image_lib
  from jaxtok.eval import metrics

  images, out = tmp_path / "images", tmp_path / "out"
  crops = {"a.png": _noise(images / "a.png", (37, 50))[0:36, 1:49],  # centered, x4
           "b.png": _noise(images / "b.png", (24, 21), seed=1)[:, 0:20]}
  assert cli.main(["reconstruct", "--model", export_f4, "--images", str(images), "--out",
                   str(out)]) == 0
  printed = capsys.readouterr().out
  assert "resolution: native (each image's own size, H and W center-cropped to multiples " \
         "of 4)" in printed and printed.count("compiling") == 1
  result = json.loads((out / "metrics.json").read_text())
  for key, crop in crops.items():
    assert result["images"][key]["size"] == list(crop.shape[:2])
    assert Image.open(out / f"{key}.png").size == (2 * crop.shape[1], crop.shape[0])
  x = crops["a.png"][None]  # PSNR measured at 36x48, not at the 16x16 training size
  recon = jax.jit(jaxtok.load(export_f4).reconstruct)(x)  # jit: eager would take 9 s
  want = metrics.psnr(np.asarray(recon), image_lib.to_float(x))[0]
  assert result["images"]["a.png"]["psnr"] == pytest.approx(float(want), rel=1e-4)


def test_reconstruct_skips_bad_files_and_reads_gif_bmp_tiff(export_f4, tmp_path, capsys):
  images, out = tmp_path / "images", tmp_path / "out"
  for i, fmt in enumerate(("gif", "bmp", "tif")):
    _noise(images / f"{i}.{fmt}", (16, 16), seed=i)
  photo = images / "photo.jpg"
  _noise(photo, (64, 64), fmt="JPEG")
  photo.write_bytes(photo.read_bytes()[:600])  # truncated
  (images / "empty.png").write_bytes(b"")
  argv = ["reconstruct", "--model", export_f4, "--images", str(images), "--out", str(out),
          "--resolution", "train"]
  assert cli.main(argv) == 0
  printed = capsys.readouterr().out
  assert "resolution: 16x16 (train: the training crop" in printed
  assert "skipped 2 files:\n  empty.png: ValueError: empty file (0 bytes)\n  photo.jpg: " \
         in printed
  result = json.loads((out / "metrics.json").read_text())
  assert sorted(result["images"]) == ["0.gif", "1.bmp", "2.tif"]
  assert sorted(result["skipped"]) == ["empty.png", "photo.jpg"]
  assert cli.main(argv[:-2] + ["--max-skipped", "1"]) == 2
  err = capsys.readouterr().err
  assert "max_skipped=1 allows (1)" in err and "empty.png" in err and "Traceback" not in err
  assert "error" in json.loads((out / "metrics.json").read_text())


def test_tokenize_past_budget_is_one_line_error(export_f4, tmp_path, capsys):
  images = tmp_path / "images"
  (images / "sub").mkdir(parents=True)
  (images / "a_empty.jpg").write_bytes(b"")
  (images / "b_text.png").write_bytes(b"plain text")
  (images / "sub" / "c.bmp").write_bytes(b"BM")
  _noise(images / "d.png", (20, 20))
  assert cli.main(["tokenize", "--model", export_f4, "--images", str(images), "--out",
                   str(tmp_path / "tokens"), "--max-skipped", "2"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err
  assert "more than max_skipped=2 allows (2)" in err and "a_empty.jpg: ValueError" in err
  assert not os.path.exists(tmp_path / "tokens" / "metadata.json")


def test_tokenize_resolution_is_train_or_fixed_never_native(export_f4, tmp_path, capsys):
  _noise(tmp_path / "images" / "a.png", (37, 50))
  base = ["tokenize", "--model", export_f4, "--images", str(tmp_path / "images")]
  assert cli.main(base + ["--out", str(tmp_path / "t32"), "--resolution", "32"]) == 0
  assert "resolution: 32x32 (shorter side resized to 32" in capsys.readouterr().out
  assert TokenSource(str(tmp_path / "t32")).token_shape == (8, 8)
  for resolution, message in (("native", "'native' cannot make token shards: every record"),
                              ("30", "resolution 30 does not suit this VQGAN"),
                              ("big", "resolution must be 'native', 'train' or a side N")):
    assert cli.main(base + ["--out", str(tmp_path / "o"), "--resolution", resolution]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_reconstruct_and_tokenize_name_bad_outputs_and_empty_folders(export_f4, tmp_path,
                                                                      capsys):
  _noise(tmp_path / "a.png", (16, 16))
  (tmp_path / "empty").mkdir()
  for command in ("reconstruct", "tokenize"):
    for images, out, message in (
        (tmp_path, tmp_path / "a.png", "is an existing file"),
        (tmp_path / "empty", tmp_path / "o", "no image files under folder"),
        (tmp_path / "missing", tmp_path / "o", "missing")):
      assert cli.main([command, "--model", export_f4, "--images", str(images), "--out",
                       str(out)]) == 2
      err = capsys.readouterr().err
      assert message in err and len(err.strip().splitlines()) == 1


def _raises(error):
  def fail(*args, **kwargs):
    raise error
  return fail


@pytest.mark.parametrize("command, error, code, message", [
    ("train", "non_finite", 2, "training stopped at step 3: 3 consecutive steps"),
    ("train", "locked", 2, "workdir w is in use by pid 42 on host since 2025-01-01T00:00:00"),
    ("eval", "corrupt", 2, "no intact checkpoint in w/checkpoints: steps 4, 2 cannot be read"),
    ("eval", "interrupt", 130, "jaxtok eval: interrupted"),
])
def test_run_state_errors_are_one_line(command, error, code, message, capsys, monkeypatch):
  from jaxtok import train  # pylint: disable=g-import-not-at-top
  from jaxtok.train import checkpoint, guards  # pylint: disable=g-import-not-at-top

  monkeypatch.delenv("JAXTOK_TRACEBACK", raising=False)
  monkeypatch.setattr(cli, "use_compile_cache", lambda: None)
  monkeypatch.setattr(cli, "_config", lambda args: None)
  errors = {"non_finite": guards.NonFiniteError(message, step=3, in_a_row=3),
            "locked": guards.WorkdirLockedError(message),
            "corrupt": checkpoint.CheckpointCorruptError(message),
            "interrupt": KeyboardInterrupt()}
  monkeypatch.setattr(train, "train" if command == "train" else "evaluate",
                      _raises(errors[error]))
  argv = [command, "--workdir", "w"] + (["--config", TINY] if command == "train" else [])
  assert cli.main(argv) == code
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
  monkeypatch.setenv("JAXTOK_TRACEBACK", "1")
  with pytest.raises(type(errors[error])):
    cli.main(argv)


def test_workdir_errors_write_nothing(tmp_path, capsys, monkeypatch):
  """A missing workdir stays missing, a file is no workdir, an export never goes into the
  run's checkpoints or over the workdir."""
  monkeypatch.setattr(cli, "use_compile_cache", lambda: None)
  missing, afile = tmp_path / "missing", tmp_path / "afile"
  afile.write_text("")
  for argv, message in [
      (["export", "--workdir", str(missing), "--out", str(tmp_path / "o")], "no checkpoint under"),
      (["eval", "--workdir", str(missing)], "no checkpoint under"),
      (["train", "--config", TINY, "--workdir", str(afile)], "is a file, not a directory"),
      (["export", "--workdir", str(missing), "--out", str(missing / "checkpoints" / "x")],
       "would write into the workdir"),
      (["export", "--workdir", str(missing), "--out", str(missing)],
       "would write into the workdir"),
      (["export", "--workdir", str(missing), "--out", str(afile)], "is a file, not a directory")]:
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
  assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_the_cli_sets_a_compile_cache_unless_one_is_set(tmp_path, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top

  before = jax.config.jax_compilation_cache_dir
  monkeypatch.setenv("JAXTOK_CACHE", str(tmp_path))
  try:
    jax.config.update("jax_compilation_cache_dir", None)
    cli.use_compile_cache()
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
    jax.config.update("jax_compilation_cache_dir", "/elsewhere")  # JAX_COMPILATION_CACHE_DIR
    cli.use_compile_cache()
    assert jax.config.jax_compilation_cache_dir == "/elsewhere"
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


def test_sample_options_are_checked_against_the_generators_sampler():
  from jaxtok.models.generators.ar import GPT
  from jaxtok.models.generators.mar import MAR
  from jaxtok.models.generators.rar import RAR

  rar = RAR.from_preset("RAR-B", codebook_size=16)
  assert cli._sampler_options(rar, ["cfg_power=2.75"]) == {"cfg_power": 2.75}
  assert cli._sampler_options(MAR.from_preset("MAR-B"), ["sampler=ddim", "sampling_steps=50"]) \
      == {"sampler": "ddim", "sampling_steps": 50}
  with pytest.raises(ValueError, match=r"--option cfg_power: not a sampling option of GPT"):
    cli._sampler_options(GPT.from_preset("GPT-B", codebook_size=16), ["cfg_power=2"])
  with pytest.raises(ValueError, match="--option must be NAME=VALUE"):
    cli._sampler_options(rar, ["cfg_power"])
