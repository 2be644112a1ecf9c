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
  assert Image.open(out / "0.png").size == (32, 16)  # original | reconstruction at 16x16

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
