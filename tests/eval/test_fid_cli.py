"""`jaxtok fid` and `jaxtok eval --model` end to end on a few photo crops (Inception at 299,
batches of 8 over the 8 fake devices): figures against the library, the protocol, stats
files, and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from jaxtok import cli
from jaxtok.eval import features, fid, inception_weights

BATCH = ["--batch-size", "8"]


@pytest.fixture(scope="module", autouse=True)
def inception_cache(tmp_path_factory):
  """The converted Inception weights go to a temporary cache, not the user's."""
  folder = str(tmp_path_factory.mktemp("inception"))
  with pytest.MonkeyPatch.context() as mp:  # not JAXTOK_CACHE: the CLI's compile cache reads it
    mp.setattr(inception_weights, "cache_dir", lambda: folder)
    yield


def _crops(folder, photo, count, size=16):  # the tiny tokenizer's size: one Inception compile
  folder.mkdir(parents=True, exist_ok=True)
  image = getattr(skdata, photo)()[..., :3]
  crops = [image[17 * i:17 * i + size, 23 * i:23 * i + size] for i in range(count)]
  for i, crop in enumerate(crops):
    Image.fromarray(crop).save(folder / f"{i}.png")
  return np.stack(crops)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  root = tmp_path_factory.mktemp("fid")
  a = _crops(root / "a", "astronaut", 6)
  b = _crops(root / "b", "coffee", 5)
  return root, a, b


def test_fid_between_folders_and_against_saved_stats(folders, capsys):
  root, a, b = folders
  out, stats = root / "r.json", root / "a.npz"
  assert cli.main(["fid", "--images", str(root / "a"), "--ref", str(root / "b"), "--save-stats",
                   str(stats), "--out", str(out), *BATCH]) == 0
  printed = capsys.readouterr().out
  result = json.loads(out.read_text())
  assert "protocol:" in printed and "legacy bilinear" in printed
  assert result["protocol"]["num_images"] == 6 and "5 files under" in result["protocol"][
      "reference"]
  extractor = features.InceptionFeatures(batch_size=8)
  fa, fb = extractor(a)["pool"], extractor(b)["pool"]
  assert result["fid"] == pytest.approx(fid.fid_from_features(fa, fb), rel=1e-4)
  assert result["fid"] > 10.0
  assert 0.0 <= result["precision"] <= 1.0 and result["inception_score"] is None
  saved = fid.load_stats(str(stats))
  np.testing.assert_allclose(saved["mu"], fa.mean(0), atol=1e-5)
  assert saved["protocol"]["num_images"] == 6
  # b against a's statistics file (the D x D path) gives the same FID as a against b's images.
  out_b = root / "b.json"
  assert cli.main(["fid", "--images", str(root / "b"), "--ref", str(stats), "--out", str(out_b),
                   *BATCH]) == 0
  result_b = json.loads(out_b.read_text())
  assert result_b["fid"] == pytest.approx(result["fid"], rel=1e-6)
  assert result["sfid"] > 1.0 and result_b["sfid"] == pytest.approx(result["sfid"], rel=1e-6)
  assert result_b["protocol"]["reference"] == f"statistics file {stats} (6 images)"


@pytest.mark.parametrize("argv, message", [
    (["fid", "--images", "nowhere"], "needs --ref"),
    (["fid", "--images", "nowhere", "--ref", "x.npz"], "'nowhere' does not exist"),
    (["fid", "--images", "a", "--save-stats", "s.txt"], "must end in .npz"),
    (["eval", "--images", "a"], "or --model and --images"),
    (["eval"], "needs --workdir"),
])
def test_bad_arguments_are_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
  """An untrained tiny VQGAN (16x16 images -> 4x4 tokens of 32 codes), as exported."""
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
  out = tmp_path_factory.mktemp("export")
  return inference.save(str(out), checkpoint.config_to_json(config), dict(variables))


def test_eval_tokenizer_on_a_folder(folders, tiny_export, capsys):
  root, _, _ = folders
  out = root / "tok.json"
  assert cli.main(["eval", "--model", tiny_export, "--images", str(root / "a"), "--out",
                   str(out), "--batch-size", "4"]) == 0
  result = json.loads(out.read_text())
  assert result["num_images"] == 6 and result["rfid"] > 1.0  # an untrained tokenizer
  assert 5.0 < result["psnr"] < 40.0 and -1.0 <= result["ssim"] <= 1.0
  assert result["lpips"] > 0.0
  assert 0.0 < result["codebook_usage"] <= 1.0 and result["codebook_entropy_bits"] >= 0.0
  assert "16x16 crop" in result["protocol"]["images"]
  assert "tokenizer: rfid" in capsys.readouterr().out


def test_sample_and_score_in_batches(folders, tiny_export):
  """A tiny class-conditional GPT + tokenizer (untrained): 10 samples in batches of 4 (the
  last one padded), classes balanced, scored against an image folder."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from jaxtok import build, inference
  import jaxtok
  from jaxtok.configs.demo import ar as ar_config
  from jaxtok.eval import generative
  from jaxtok.train import checkpoint

  root, _, _ = folders
  key = jax.random.key(0, impl="rbg")
  tok = jaxtok.load(tiny_export)
  gen_config = ar_config.get_config("tiny")
  gen_config.model.num_classes = 3
  gen_model = build.model(gen_config)
  gen_vars = jax.jit(lambda k: nn.meta.unbox(gen_model.init(
      k, jnp.zeros((1, 4, 4), jnp.int32), jnp.zeros((1,), jnp.int32))))(key)
  gen = inference.LoadedGenerator(gen_model, dict(gen_vars), gen_config)
  result, preview = generative.sample_and_score(gen, tok, str(root / "a"), num=10, seed=1,
                                                batch_size=4, keep=6, progress=False)
  assert result["num_images"] == 10 and result["fid"] > 0.0
  assert preview.shape == (6, 16, 16, 3) and preview.dtype == np.uint8
  assert "classes balanced over 3" in result["protocol"]["images"]
  np.testing.assert_array_equal(generative.balanced_labels(4, 4, 3), [1, 2, 0, 1])
  # The same through `jaxtok sample --fid-ref` on the exports (the compiles are reused).
  gen_export = inference.save(str(root / "gen"), checkpoint.config_to_json(gen_config),
                              dict(gen_vars))
  out = root / "samples"
  assert cli.main(["sample", "--model", gen_export, "--tokenizer", tiny_export, "--out",
                   str(out), "--num", "10", "--seed", "1", "--batch-size", "4", "--fid-ref",
                   str(root / "a")]) == 0
  scored = json.loads((out / "fid.json").read_text())
  assert scored["fid"] == pytest.approx(result["fid"], rel=1e-6)
  assert (out / "samples.png").is_file() and not (out / "samples.npz").exists()
