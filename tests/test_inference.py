"""jaxtok.load objects and `jaxtok sample`: token ids and class labels checked under jit too,
a tokenizer that differs from the generator's refused even with equal sizes, and bad exports
and bad sampling arguments refused with one-line errors before any work."""

import functools
import json
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxtok import build, cli, inference
from jaxtok.configs.demo import ar as ar_config
from jaxtok.configs.demo import tokenizer as tokenizer_config
from jaxtok.quantizers.base import IndexRangeWarning

# RBG keys: on the CPU, XLA compiles threefry initializers slowly (see test_tokenizer_api.py).
KEY = jax.random.key(0, impl="rbg")


def _tokenizer_config(**model_config) -> ml_collections.ConfigDict:
  """The tiny demo VQGAN: 16x16 images -> 4x4 tokens of 32 codes."""
  config = tokenizer_config.get_config("tiny")
  config.model.config.ch_mult = (1, 2, 2)
  config.model.config.update(model_config)
  return config


def _generator_config(**entries) -> ml_collections.ConfigDict:
  """The tiny demo GPT (4x4 tokens of 32 codes) as read back from an export's JSON."""
  return ml_collections.ConfigDict({**ar_config.get_config("tiny").to_dict(), **entries})


def _unbound(kind, config):
  """A LoadedTokenizer / LoadedGenerator without variables: enough for the checks."""
  return kind(build.model(config), None, config)


@pytest.fixture(scope="module")
def tok():
  config = _tokenizer_config()
  model = build.model(config)
  variables = jax.jit(lambda k: nn.meta.unbox(model.init(
      {"params": k, "quantizer": k}, jnp.zeros((1, 16, 16, 3)))))(KEY)
  return inference.LoadedTokenizer(model, dict(variables), config)


IDS = np.arange(2 * 4 * 4, dtype=np.int32).reshape(2, 4, 4) % 32
BAD_IDS = IDS.copy()
BAD_IDS[0, 0, 0], BAD_IDS[1, 2, 3], BAD_IDS[1, 0, 0] = 32, -1, 40


# ------------------------------------------------------------ ids and labels, under jit too

def test_jitted_decode_reports_out_of_range_ids_and_decodes_them_clamped(tok):
  unchecked = jax.jit(functools.partial(tok.decode, check=False))
  assert jnp.isnan(unchecked(BAD_IDS)).any()  # the silent failure this check replaces
  with pytest.warns(IndexRangeWarning,
                    match=r"indices: 3 of 32 ids lie outside \[0, 32\) \(values in \[-1, 40\]\)"):
    images = jax.jit(tok.decode)(BAD_IDS)
    jax.effects_barrier()
  chex.assert_tree_all_finite(images)
  np.testing.assert_array_equal(images, unchecked(np.clip(BAD_IDS, 0, 31)))


def test_in_range_ids_decode_bitwise_as_unchecked_and_without_a_warning(tok):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    checked = jax.jit(tok.decode)(IDS)
    jax.effects_barrier()
  assert not caught, [str(w.message) for w in caught]
  np.testing.assert_array_equal(checked, jax.jit(functools.partial(tok.decode, check=False))(IDS))


def test_eager_decode_of_out_of_range_ids_raises(tok):
  with pytest.raises(ValueError, match=r"indices must lie in \[0, 32\); got values in \[-1, 40\]"):
    tok.decode(BAD_IDS)
  with pytest.raises(TypeError, match="integer array"):
    jax.jit(tok.decode)(IDS.astype(np.float32))


def test_jitted_sample_reports_out_of_range_labels():
  config = _generator_config()
  config.model.num_classes = 4
  model = build.model(config)
  variables = jax.jit(lambda k: nn.meta.unbox(model.init(
      {"params": k}, jnp.zeros((1, 4, 4), jnp.int32), jnp.zeros((1,), jnp.int32))))(KEY)
  gen = inference.LoadedGenerator(model, dict(variables), config)
  labels, rng = jnp.array([3, 5, 9], jnp.int32), jax.random.key(1)
  with pytest.warns(IndexRangeWarning,
                    match=r"labels: 2 of 3 ids lie outside \[0, 4\) \(values in \[3, 9\]\)"):
    ids = jax.jit(gen.sample)(rng, labels)
    jax.effects_barrier()
  np.testing.assert_array_equal(ids, gen.sample(rng, jnp.array([3, 3, 3], jnp.int32)))
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
    gen.sample(rng, labels)


# ------------------------------------------------------------ the generator's own tokenizer

def test_tokenizer_fingerprint_reads_json_and_config_dicts_alike():
  config = _tokenizer_config()
  fingerprint = inference.tokenizer_fingerprint(config)
  assert set(fingerprint) == {"model", "quantizer", "data.image_size"}
  assert fingerprint["model"]["config"]["ch_mult"] == [1, 2, 2]
  assert inference.tokenizer_fingerprint(json.loads(config.to_json())) == fingerprint
  with pytest.raises(ValueError, match="no 'data.image_size' entry"):
    inference.tokenizer_fingerprint({"model": {}, "quantizer": {}, "data": {}})


def test_check_pair_refuses_a_tokenizer_of_equal_sizes_but_other_fields():
  trained_on, other = _tokenizer_config(), _tokenizer_config(ch=16, z_channels=8)
  other.exported_from = {"workdir": "/runs/other_tok", "step": 9, "ema": True}
  tok = _unbound(inference.LoadedTokenizer, other)
  assert (tok.model.token_shape((16, 16)), tok.model.quantizer.codebook_size) == ((4, 4), 32)
  trained_on.exported_from = {"workdir": "/runs/tok", "step": 600, "ema": True}
  gen = _unbound(inference.LoadedGenerator,
                 _generator_config(tokenizer=json.loads(trained_on.to_json())))
  with pytest.raises(ValueError, match=(
      r"not the one that made the generator's training tokens \(the generator's tokenizer vs "
      r"this one\): model.config.ch: 32 vs 16, model.config.z_channels: 32 vs 8; its tokens "
      r"were made by the export of /runs/tok \(step 600\)$")):
    inference.check_pair(gen, tok)
  # The same tokenizer (exported elsewhere: exported_from is not compared) passes; so does
  # any tokenizer of the right sizes for a generator whose config has no tokenizer entry.
  inference.check_pair(gen, _unbound(inference.LoadedTokenizer, _tokenizer_config()))
  inference.check_pair(_unbound(inference.LoadedGenerator, _generator_config()), tok)


# ------------------------------------------------------------ bad exports, bad arguments

@pytest.mark.parametrize("files,error,match", [
    ({}, FileNotFoundError, "is not a jaxtok export: no config.json"),
    ({"config.json": "{not json"}, ValueError, r"config.json is not valid JSON \(Expecting"),
    ({"config.json": '{"trainer": "gan"}'}, ValueError,
     r"'trainer' must be one of \[('[a-z]+', )*'tokenizer'(, '[a-z]+')*\]; got 'gan'"),
    ({"config.json": '{"trainer": "ar"}'}, FileNotFoundError,
     r"is an incomplete jaxtok export: it has config.json but no variables/"),
])
def test_load_refuses_broken_exports(tmp_path, files, error, match):
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  with pytest.raises(error, match=match):
    inference.load(str(tmp_path))


def test_load_refuses_variables_of_another_model(tok, tmp_path):
  config = json.loads(tok.config.to_json())
  export = inference.save(str(tmp_path / "export"), config, tok.variables)
  chex.assert_trees_all_equal(inference.load(export).variables, tok.variables)
  with pytest.raises(ValueError, match=r"dtype must be one of \['bfloat16', 'float32'\]"):
    inference.load(export, dtype="float16")
  config["model"]["config"]["ch"] = 64  # config.json edited after the export
  with open(tmp_path / "export" / inference.CONFIG_FILE, "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError, match=(
      r"export'?: the variables do not fit the model the config describes: "
      r"params/decoder/\S+ has shape \(\d+,\), the model's \(\d+,\); .* and \d+ more")):
    inference.load(export)


def test_sample_images_refuses_bad_num_seed_and_class_id():
  gen = _unbound(inference.LoadedGenerator, _generator_config())
  tok = _unbound(inference.LoadedTokenizer, _tokenizer_config())
  for num in (0, 2.0):
    with pytest.raises(ValueError, match=f"num must be an integer >= 1; got {num}"):
      inference.sample_images(gen, tok, num=num)
  with pytest.raises(ValueError, match="class_id must be an integer class id; got 1.5"):
    inference.sample_images(gen, tok, class_id=1.5)
  for seed in (-1, 2**32, 1.5):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
      inference.sample_images(gen, tok, seed=seed)


@pytest.mark.parametrize("extra,message", [
    (["--num", "0"], "--num must be >= 1; got 0"),
    (["--seed", "-1"], r"--seed must lie in [0, 2**32) (PRNG seeds are 32-bit); got -1"),
    (["--seed", str(2**32)], "--seed must lie in [0, 2**32)"),
    (["--cfg-scale", "3"], "--cfg-scale 3 needs --class-id: classifier-free guidance"),
    (["--out", "a_file"], "--out 'a_file' is a file"),
    ([], "--model: '/nonexistent/gen' is not a jaxtok export"),
])
def test_sample_command_refuses_bad_flags_in_one_line(extra, message, tmp_path, monkeypatch,
                                                      capsys):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "a_file").write_text("")
  argv = ["sample", "--model", "/nonexistent/gen", "--tokenizer", "/nonexistent/tok", "--out",
          "samples", *extra]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert message in err and len(err.strip().splitlines()) == 1, err


def test_sample_command_names_the_export_missing_its_variables(tmp_path, capsys):
  (tmp_path / "gen").mkdir()
  (tmp_path / "gen" / "config.json").write_text(_generator_config().to_json())
  assert cli.main(["sample", "--model", str(tmp_path / "gen"), "--tokenizer", "t", "--out",
                   str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert "--model: " in err and "incomplete jaxtok export" in err and "variables/" in err, err
