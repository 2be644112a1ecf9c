"""The VAR trainer end to end on the CPU: a tiny multi-scale VQVAE export tokenizes images
(`jaxtok tokenize`: flat multi-scale ids), a tiny VAR trains on them with the tokenizer's
frozen quantizer making the teacher-forcing inputs (the loss falls), and `jaxtok export` /
`jaxtok sample` run it."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxtok import build, cli, inference, train
from jaxtok.configs.demo import var as var_config
from jaxtok.configs.demo import var_tokenizer
from jaxtok.train import checkpoint, var_trainer
from jaxtok.train import state as state_lib
from jaxtok.train.metrics import read_jsonl

STEPS = 16


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
  """(tokenizer export, token directory) of 16 random 16x16 images."""
  root = tmp_path_factory.mktemp("var_data")
  config = var_tokenizer.get_config("tiny")
  model = build.model(config)
  variables = jax.jit(lambda k: nn.meta.unbox(model.init(
      {"params": k, "quantizer": k}, jnp.zeros((1, 16, 16, 3)))))(state_lib.make_key(0))
  export = inference.save(str(root / "tokenizer"), checkpoint.config_to_json(config),
                          dict(variables))
  images = root / "images"
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(16):  # smooth random colour fields, so the ids vary across images
    small = rng.integers(0, 256, (2, 2, 3), np.uint8)
    Image.fromarray(small).resize((16, 16), Image.BILINEAR).save(images / f"{i}.png")
  assert cli.main(["tokenize", "--model", export, "--images", str(images), "--out",
                   str(root / "tokens")]) == 0
  return export, str(root / "tokens")


def _config(token_dir, tokenizer):
  config = var_config.get_config("tiny")
  config.data.path, config.data.tokenizer = token_dir, tokenizer
  config.train.steps, config.checkpoint.every_steps = STEPS, STEPS
  return config


def test_var_trains_on_multiscale_tokens_and_samples(tokens, tmp_path):
  export, token_dir = tokens
  with open(f"{token_dir}/metadata.json") as f:
    assert json.load(f)["token_shape"] == [21]  # 1 + 4 + 16 ids per image
  result = train.train(_config(token_dir, export), str(tmp_path / "run"))
  rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
  assert result["step"] == STEPS and len(rows) == STEPS
  assert rows[-1]["loss"] < rows[0]["loss"] - 0.25, [r["loss"] for r in rows]
  assert all(0 <= r["accuracy_last_scale"] <= 1 for r in rows)
  out = str(tmp_path / "export")
  assert cli.main(["export", "--workdir", str(tmp_path / "run"), "--out", out]) == 0
  samples = tmp_path / "samples"
  assert cli.main(["sample", "--model", out, "--tokenizer", export, "--out", str(samples),
                   "--num", "3", "--top-k", "8"]) == 0
  ids = np.load(samples / "samples.npz")["tokens"]
  assert ids.shape == (3, 21) and 0 <= ids.min() <= ids.max() < 32
  width, height = Image.open(samples / "samples.png").size  # 16x16 images, 2px gaps
  assert (width + 2) % 18 == 0 and (height + 2) % 18 == 0


def test_the_tokenizer_is_required_and_checked(tokens, tmp_path):
  export, token_dir = tokens
  config = _config(token_dir, "")
  model = build.model(config)
  with pytest.raises(ValueError, match="data.tokenizer must name the export"):
    var_trainer.frozen_quantizer(config, model)
  config = _config(token_dir, export)
  config.model.patch_nums = (1, 2, 3)
  with pytest.raises(ValueError, match=r"the model's scales \(1, 2, 3\)"):
    var_trainer.frozen_quantizer(config, build.model(config))
