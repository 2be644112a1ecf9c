"""LlamaGen checkpoints convert exactly: small VQ and GPT models built by the authors' code with
random weights (tools/fixtures/llamagen.py, torch 2.14) give the same indices, latents,
images, logits and greedy decodings in jaxtok; every released checkpoint's manifest (names,
shapes) converts into its preset's variables with the authors' parameter counts."""

import json
import pathlib

import numpy as np
import pytest

import jaxtok
from jaxtok import build, cli, convert, inference, weights
from jaxtok.convert import common
from tests.convert.conftest import convert_release

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
VQ_FILE = str(FIXTURES / "llamagen" / "vq.pt")
GPT_FILE = str(FIXTURES / "llamagen" / "gpt.pt")
REF = dict(np.load(FIXTURES / "llamagen" / "outputs.npz"))
MANIFESTS = sorted((FIXTURES / "manifests").glob("llamagen-*.json"))
# The fixtures' sizes that no shape holds: 8 x 8 images (4 x 4 tokens), 2 heads.
GPT_OPTIONS = ["--option", "image_size=8", "--option", "num_heads=2"]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
  """The fixtures converted by `jaxtok convert`: VQ, GPT (model and ema weights)."""
  root = tmp_path_factory.mktemp("llamagen")
  paths = {k: str(root / k) for k in ("vq", "gpt", "gpt_ema")}
  argv = {"vq": ["--from", "llamagen-vq16", "--checkpoint", VQ_FILE, "--option",
                 "image_size=8"],
          "gpt": ["--from", "llamagen-gpt-b-256", "--checkpoint", GPT_FILE, *GPT_OPTIONS,
                  "--option", f"tokenizer={paths['vq']}"]}
  argv["gpt_ema"] = [*argv["gpt"], "--ema"]
  for name, args in argv.items():
    assert cli.main(["convert", *args, "--out", paths[name]]) == 0
  return paths


@pytest.fixture(scope="module")
def vq(exports):
  return jaxtok.load(exports["vq"])


@pytest.fixture(scope="module")
def gpt(exports):
  return jaxtok.load(exports["gpt"])


def test_vq_indices_latents_and_images_equal_the_authors(vq):
  images = REF["vq_images"]
  np.testing.assert_array_equal(np.asarray(vq.encode(images)), REF["vq_indices"])
  latents = vq.model.apply(vq.variables, images, method=lambda m, x: m._latents(x))
  np.testing.assert_allclose(np.asarray(latents), REF["vq_latents"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(vq.decode(REF["vq_indices"])), REF["vq_decoded"],
                             atol=1e-4, rtol=0)
  np.testing.assert_allclose(np.asarray(vq.reconstruct(images)), REF["vq_reconstruction"],
                             atol=1e-4, rtol=0)
  # The small network is the VQ-16 preset with the fields read off its shapes.
  assert vq.config.model.preset == "llamagen-vq16"
  assert dict(vq.config.model.config) == {"ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
                                          "decoder_res_blocks": 2, "z_channels": 32}


@pytest.mark.parametrize("ema", [False, True])
def test_gpt_logits_equal_the_authors(exports, gpt, ema):
  model = jaxtok.load(exports["gpt_ema"]) if ema else gpt
  tokens = REF["gpt_tokens"].reshape(2, 4, 4)
  logits = model.model.apply(model.variables, tokens, REF["gpt_labels"], method="logits")
  want = REF["gpt_logits_ema" if ema else "gpt_logits"]
  assert np.abs(want).max() > 1  # logits that say something
  np.testing.assert_allclose(np.asarray(logits).reshape(want.shape), want, atol=1e-4, rtol=0)
  assert model.config.converted_from.ema == ema


@pytest.mark.parametrize("cfg", [1, 4])
def test_gpt_greedy_decoding_equals_the_authors_token_for_token(gpt, vq, cfg):
  inference.check_pair(gpt, vq)
  tokens = gpt.sample(0, REF["gpt_labels"], cfg_scale=float(cfg), temperature=0.0)
  np.testing.assert_array_equal(np.asarray(tokens).reshape(2, -1), REF[f"gpt_greedy_cfg{cfg}"])


def test_cli_sample_pairs_the_converted_gpt_and_vq(exports, tmp_path):
  out = tmp_path / "samples"
  assert cli.main(["sample", "--model", exports["gpt"], "--tokenizer", exports["vq"], "--out",
                   str(out), "--num", "2", "--class-id", "1", "--temperature", "0"]) == 0
  tokens = np.load(out / "samples.npz")["tokens"].reshape(2, -1)
  np.testing.assert_array_equal(tokens, REF["gpt_greedy_cfg1"][[1, 1]])
  assert (out / "samples.png").is_file()
  # The GPT export carries the config of the tokenizer export it was converted with.
  config = json.loads((pathlib.Path(exports["gpt"]) / "config.json").read_text())
  assert inference.tokenizer_fingerprint(config["tokenizer"]) == inference.tokenizer_fingerprint(
      json.loads((pathlib.Path(exports["vq"]) / "config.json").read_text()))


def test_convert_list_names_every_release(capsys):
  assert cli.main(["convert", "--list"]) == 0
  out = capsys.readouterr().out
  for name in ("vq_ds16_c2i.pt", "vq_ds8_c2i.pt", "vq_ds16_t2i.pt", "c2i_B_256.pt",
               "c2i_B_384.pt", "c2i_L_256.pt", "c2i_L_384.pt", "c2i_XL_384.pt",
               "c2i_XXL_384.pt", "c2i_3B_384.pt", "llamagen-gpt-3b-384"):
    assert name in out


@pytest.mark.parametrize("wrapped", [
    {"model": {"module.w": 1}}, {"model": {"_orig_mod.w": 1}}, {"state_dict": {"w": 1}},
    {"w": 1}, {"module": {"module._orig_mod.w": 1}}, {"ema": {"w": 1}, "model": {"w": 0}},
])
def test_state_dict_unwraps_released_wrappers(wrapped):
  wrapped = _arrays(wrapped)
  use_ema = "ema" in wrapped
  assert list(common.state_dict(wrapped, use_ema=use_ema)) == ["w"]
  assert common.state_dict(wrapped, use_ema=use_ema)["w"] == 1


def _arrays(tree):
  return {k: _arrays(v) if isinstance(v, dict) else np.asarray(v, np.float32)
          for k, v in tree.items()}


def test_ema_that_is_not_there_is_named():
  with pytest.raises(ValueError, match="use_ema asks for its 'ema' weights"):
    common.state_dict(_arrays({"model": {"w": 1}}), use_ema=True)


VQ_STATE = common.state_dict(weights.read_object(VQ_FILE))


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("decoder.mid.0.norm1.weight"), "1 missing: decoder.mid.0.norm1.weight"),
    (lambda s: s.update({"decoder.extra.weight": np.zeros(3)}),
     r"1 unused \(not in the jaxtok model\): decoder.extra.weight"),
    (lambda s: s.update({"post_quant_conv.bias": np.zeros(5)}),
     r"post_quant_conv.bias has shape \(5,\), expected \(32,\)"),
])
def test_missing_extra_and_misshapen_tensors_are_named(edit, message):
  state = dict(VQ_STATE)
  edit(state)
  with pytest.raises(ValueError, match=message):
    convert.sources()["llamagen-vq16"].convert_state(state, "vq.pt", image_size=8)


@pytest.mark.parametrize("name", ["layers.1.attention.wqkv.weight", "layers.0.ffn_norm.weight"])
def test_a_layer_missing_one_tensor_is_named(exports, name):
  state = common.state_dict(weights.read_object(GPT_FILE))
  state.pop(f"module.{name}" if f"module.{name}" in state else name)
  with pytest.raises(ValueError, match=rf"does not fit: 1 missing: {name}$"):
    convert.sources()["llamagen-gpt-b-256"].convert_state(
        state, "gpt.pt", image_size=8, num_heads=2, tokenizer=exports["vq"])


def test_gpt_options_are_checked():
  state = common.state_dict(weights.read_object(GPT_FILE))
  source = convert.sources()["llamagen-gpt-b-256"]
  with pytest.raises(ValueError, match="pass the num_heads option"):
    source.convert_state(state, image_size=8)
  with pytest.raises(ValueError, match="no option sharding"):
    source.convert_state(state, sharding=1)
  with pytest.raises(ValueError, match="its 16384 codes differ from the GPT's vocabulary of 64"):
    source.convert_state(state, image_size=256, num_heads=2)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_release_converts_to_its_preset(path):
  manifest, config, _, model = convert_release(path)
  assert "config" not in config["model"] and set(config["model"]) <= {
      "name", "preset", "codebook_size", "num_classes", "token_shape"}  # the preset exactly
  if build.TRAINED_KINDS[config["trainer"]] == "generator":
    grid = int(manifest["file"].split("_")[-1].split(".")[0]) // 16
    assert tuple(model.token_shape) == (grid, grid) and model.num_classes == 1000


def test_buffers_of_a_gpt_saved_after_sampling_are_dropped(exports):
  state = common.state_dict(weights.read_object(GPT_FILE))
  state.update({"freqs_cis": np.zeros((17, 8, 2)), "causal_mask": np.ones((2, 24, 24), bool),
                "layers.0.attention.kv_cache.k_cache": np.zeros((2, 2, 24, 16))})
  config, _ = convert.sources()["llamagen-gpt-b-256"].convert_state(
      state, image_size=8, num_heads=2, tokenizer=exports["vq"])
  assert config["model"]["depth"] == 2


@pytest.mark.parametrize("gpt, size", [("llamagen-gpt-b-256", 256),
                                       ("llamagen-gpt-xxl-384", 384)])
def test_released_gpts_pair_with_the_released_vq16_at_their_size(gpt, size):
  """A GPT's tokenizer entry is the config `jaxtok convert --from llamagen-vq16` writes at
  the GPT's image size, so `jaxtok sample` accepts that pair (and refuses others)."""
  def converted(source, **options):
    manifest = json.loads((FIXTURES / "manifests" / f"{source}.json").read_text())
    return convert.sources()[source].convert_state(common.abstract(manifest["tensors"]),
                                                   **options)[0]

  vq = converted("llamagen-vq16", image_size=size)
  trained_on = converted(gpt)["tokenizer"]
  assert inference.tokenizer_fingerprint(trained_on) == inference.tokenizer_fingerprint(vq)
  other = converted("llamagen-vq16", image_size=640 - size)
  assert inference.tokenizer_fingerprint(trained_on) != inference.tokenizer_fingerprint(other)


def test_option_values_are_json_else_strings():
  assert convert.parse_options(["image_size=384", "tokenizer=exports/vq 16", "x=true"]) == {
      "image_size": 384, "tokenizer": "exports/vq 16", "x": True}
  with pytest.raises(ValueError, match="--option must be NAME=VALUE"):
    convert.parse_options(["image_size"])
