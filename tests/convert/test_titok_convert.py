"""TiTok and the MaskGIT VQGAN inside it convert exactly: small two-stage, single-stage VQ
and VAE TiTok models built by bytedance/1d-tokenizer's code with random weights
(tools/fixtures/titok.py) give the same indices, latents and images in jaxtok; every released
TiTok checkpoint's manifest converts into variables of its jaxtok model's shapes, with the
authors' parameter counts."""

import pathlib

import ml_collections
import numpy as np
import pytest

import jaxtok
from jaxtok import cli, convert, inference, weights
from jaxtok.convert import common
from tests.convert.conftest import convert_release

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
REF = dict(np.load(FIXTURES / "titok" / "outputs.npz"))
MANIFESTS = sorted((FIXTURES / "manifests").glob("titok-*.json"))
# fixture file, the source converting it
CASES = {"two_stage": ("two_stage.bin", "titok-s128"), "vq": ("vq.bin", "titok-bl64-vq8k"),
         "vae": ("vae.bin", "titok-bl64-vae-c16")}
TOL = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
  """The fixtures converted by `jaxtok convert`, loaded."""
  root = tmp_path_factory.mktemp("titok")
  loaded = {}
  for mode, (file, source) in CASES.items():
    assert cli.main(["convert", "--from", source, "--checkpoint",
                     str(FIXTURES / "titok" / file), "--out", str(root / mode)]) == 0
    loaded[mode] = jaxtok.load(str(root / mode))
  return loaded


def _unit(images):
  """jaxtok's [-1, 1] images in the reference's [0, 1]."""
  return (np.asarray(images) + 1.0) * 0.5


@pytest.mark.parametrize("mode", ["two_stage", "vq"])
def test_vq_titok_ids_codes_and_images_equal_the_authors(tokenizers, mode):
  tok = tokenizers[mode]
  images = REF[f"{mode}_images"] * 2.0 - 1.0  # the API's range; the model maps it
  ids, codes = tok.encode(images, return_latents=True)
  np.testing.assert_array_equal(np.asarray(ids), REF[f"{mode}_indices"])
  np.testing.assert_allclose(np.asarray(codes), REF[f"{mode}_quantized"], **TOL)
  assert np.abs(REF[f"{mode}_decoded"]).max() > 1  # images that say something
  np.testing.assert_allclose(_unit(tok.decode(REF[f"{mode}_indices"])), REF[f"{mode}_decoded"],
                             **TOL)
  np.testing.assert_allclose(_unit(tok.reconstruct(images)), REF[f"{mode}_reconstruction"],
                             **TOL)


def test_two_stage_is_the_two_stage_model_with_the_legacy_token_layout(tokenizers):
  model = tokenizers["two_stage"].config.model
  assert model.name == "titok_two_stage.TiTokTwoStage" and model.legacy_token_layout
  assert (model.encoder_size, model.image_size, model.patch_size) == ("tiny", 8, 2)
  assert dict(model.pixel_config) == {"ch": 32, "ch_mult": [1, 1]}
  assert tokenizers["two_stage"].config.quantizer.metric == "cosine"
  # Without the released layout the same weights give other tokens.
  variables, config = tokenizers["two_stage"].variables, tokenizers["two_stage"].config
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.legacy_token_layout = False
  other = inference.assemble(config.to_dict(), variables)
  assert not np.array_equal(np.asarray(other.encode(REF["two_stage_images"] * 2 - 1)),
                            REF["two_stage_indices"])


def test_vae_titok_mean_and_images_equal_the_authors(tokenizers):
  tok = tokenizers["vae"]
  _, mean = tok.encode(REF["vae_images"] * 2.0 - 1.0, return_latents=True)
  np.testing.assert_allclose(np.asarray(mean), REF["vae_mean"], **TOL)
  images = tok.model.apply(tok.variables, REF["vae_mean"], method="decode_latents")
  np.testing.assert_allclose(_unit(images), REF["vae_decoded"], **TOL)


def test_a_file_of_another_design_is_named():
  state = common.state_dict(weights.read_object(str(FIXTURES / "titok" / "vq.bin")))
  with pytest.raises(ValueError, match="holds a vq TiTok .* not the two_stage one"):
    convert.sources()["titok-s128"].convert_state(state, "vq.bin")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_release_converts_to_its_model(path):
  _, config, _, _ = convert_release(path)
  assert config["data"]["image_size"] == 256 and config["model"]["patch_size"] == 16
