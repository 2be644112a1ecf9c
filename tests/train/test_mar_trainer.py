"""The MAR trainer on latent shards: the diffusion loss falls on a learnable latent pattern,
a step on 8 devices equals the single-device step; `jaxtok tokenize` writes a KL tokenizer's
latents and `jaxtok sample` decodes MAR samples with it.

One training subprocess (sharing the persistent compile cache of the other training tests).
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from array_record.python import array_record_module
from PIL import Image

import jaxtok
from jaxtok import build, cli, inference
from jaxtok.configs.demo import kl_tokenizer
from jaxtok.configs.demo import mar as mar_config
from jaxtok.data import tokens as token_data
from jaxtok.train import checkpoint, mar_trainer
from jaxtok.train import state as state_lib
from jaxtok.train.metrics import read_jsonl
from tests.train.conftest import (assert_sharded_step_equals_run, every_step_config,
                                   train_in_subprocess)

STEPS = 12


def write_latents(directory, latents: np.ndarray, dtype: str = "float16") -> str:
  """A latent directory as data/tokens.py writes it (one [h, w, C] record per sample)."""
  os.makedirs(directory, exist_ok=True)
  name = token_data.shard_name(0, 1)
  writer = array_record_module.ArrayRecordWriter(os.path.join(directory, name), "group_size:1")
  for row in latents:
    writer.write(row.astype(token_data.RECORD_DTYPES[dtype]).tobytes())
  writer.close()
  meta = {"token_shape": list(latents.shape[1:]), "codebook_size": 0, "dtype": dtype,
          "num_records": len(latents), "shards": [name]}
  with open(os.path.join(directory, token_data.METADATA), "w") as f:
    json.dump(meta, f)
  return str(directory)


def tiny_config(latent_dir: str):
  return every_step_config(mar_config.get_config("tiny"), latent_dir, STEPS)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """(workdir, latent_dir, result): 32 latent grids, each channel a smooth ramp with its own
  sign and offset, so the visible tokens predict the masked ones."""
  rng = np.random.default_rng(0)
  ramp = np.linspace(-1, 1, 16).reshape(1, 4, 4, 1)
  latents = (rng.choice([-1.0, 1.0], (32, 1, 1, 4)) * ramp
             + 0.3 * rng.standard_normal((32, 1, 1, 4))).astype(np.float32)
  latent_dir = write_latents(tmp_path_factory.mktemp("latents"), latents)
  workdir = str(tmp_path_factory.mktemp("mar"))
  result = train_in_subprocess("tests.train.test_mar_trainer:tiny_config", workdir, latent_dir)
  return workdir, latent_dir, result


def test_diffusion_loss_falls(run):
  workdir, _, result = run
  rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
  assert [r["step"] for r in rows] == list(range(1, STEPS + 1)) and result["step"] == STEPS
  first, last = np.mean([r["loss"] for r in rows[:2]]), np.mean([r["loss"] for r in rows[-2:]])
  assert last < first - 0.2, [r["loss"] for r in rows]
  assert all(0.7 <= r["mask_ratio"] <= 1.0 and r["skipped"] == 0 for r in rows)


def test_one_step_on_a_2x2x2_mesh_equals_the_single_device_step(run):
  workdir, latent_dir, _ = run
  metrics = assert_sharded_step_equals_run(workdir, tiny_config(latent_dir),
                                           mar_trainer.make_train_step, mar_trainer.init_state,
                                           mar_trainer.train_iterator, atol=1e-5)
  assert int(metrics["skipped"]) == 0


def test_latent_shards_round_trip_and_are_checked(tmp_path):
  latents = np.random.default_rng(1).standard_normal((3, 2, 2, 4)).astype(np.float32)
  for dtype, atol in (("float32", 0), ("float16", 2e-3)):
    source = token_data.labelled_latents(write_latents(tmp_path / dtype, latents, dtype), "none",
                                         token_shape=(2, 2), token_dim=4, num_classes=0)
    got = np.stack([source[i]["tokens"] for i in range(3)])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, latents, atol=atol, rtol=0)
  with pytest.raises(ValueError, match=r"reads float latents \(3, 3, 4\)"):
    token_data.labelled_latents(str(tmp_path / "float32"), "none", token_shape=(3, 3),
                                token_dim=4, num_classes=0)


def _kl_tokenizer_export(out) -> str:
  """A tiny untrained KL tokenizer: 16x16 images -> 4x4 latents of 4 channels."""
  config = kl_tokenizer.get_config("tiny")
  config.model.config.ch_mult = (1, 2, 2)
  config.quantizer.dim = 4
  tokenizer = build.model(config)
  variables = jax.jit(lambda k: nn.meta.unbox(tokenizer.init(
      {"params": k, "quantizer": k}, jnp.zeros((1, 16, 16, 3)))))(state_lib.make_key(0))
  return inference.save(str(out), checkpoint.config_to_json(config), dict(variables))


def test_tokenize_writes_latents_and_sample_decodes_mar_samples(run, tmp_path):
  workdir, _, _ = run
  tokenizer = _kl_tokenizer_export(tmp_path / "kl")
  images = tmp_path / "images"
  images.mkdir()
  pixels = np.random.default_rng(3).integers(0, 256, (3, 16, 16, 3), np.uint8)
  for i, image in enumerate(pixels):
    Image.fromarray(image).save(images / f"{i}.png")
  latents = tmp_path / "latents"
  assert cli.main(["tokenize", "--model", tokenizer, "--images", str(images), "--out",
                   str(latents)]) == 0
  source = token_data.labelled_latents(str(latents), "none", token_shape=(4, 4), token_dim=4,
                                       num_classes=0)
  tok = jaxtok.load(tokenizer)
  want = np.asarray(tok.encode(pixels, return_latents=True)[1])
  np.testing.assert_allclose(np.stack([source[i]["tokens"] for i in range(3)]), want,
                             atol=1e-5, rtol=0)
  export = str(tmp_path / "export")
  assert cli.main(["export", "--workdir", workdir, "--out", export]) == 0
  out = tmp_path / "samples"
  assert cli.main(["sample", "--model", export, "--tokenizer", tokenizer, "--out", str(out),
                   "--num", "2", "--seed", "1", "--num-steps", "3"]) == 0
  sampled = np.load(out / "samples.npz")["tokens"]
  assert sampled.shape == (2, 4, 4, 4) and sampled.dtype == np.float32
  assert Image.open(out / "samples.png").size[0] > 16
