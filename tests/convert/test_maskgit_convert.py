"""The MaskGIT VQGAN converts exactly: a small VQVAE built by google-research/maskgit's own Flax
code with random weights (tools/fixtures/maskgit.py), saved as the released extension-less
msgpack checkpoint, gives the same ids, features and images in jaxtok, as does a small model
of the PyTorch port 1d-tokenizer ships (tools/fixtures/titok.py); the released model's
names and shapes (Flax, and the PyTorch port 1d-tokenizer ships) convert into the
"maskgit-f16" preset's variables with its parameter count."""

import pathlib

import numpy as np
import pytest

import jaxtok
from jaxtok import cli, convert, inference, weights
from jaxtok.convert import common
from tests.convert.conftest import convert_release

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
CHECKPOINT = FIXTURES / "maskgit" / "tokenizer_imagenet256_checkpoint"
REF = dict(np.load(FIXTURES / "maskgit" / "outputs.npz"))
MANIFESTS = [FIXTURES / "manifests" / f"{name}.json"
             for name in ("maskgit-vqgan", "maskgit-vqgan-torch")]
TOL = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  out = tmp_path_factory.mktemp("maskgit") / "export"
  assert cli.main(["convert", "--from", "maskgit-vqgan", "--checkpoint", str(CHECKPOINT),
                   "--option", "image_size=8", "--out", str(out)]) == 0
  return jaxtok.load(str(out))


def test_ids_features_and_images_equal_the_authors(tokenizer):
  images = REF["images"] * 2.0 - 1.0  # jaxtok's range; the export maps to MaskGIT's [0, 1]
  np.testing.assert_array_equal(np.asarray(tokenizer.encode(images)), REF["indices"])
  features = tokenizer.model.apply(tokenizer.variables, images,
                                   method=lambda m, x: m._latents(x))  # pylint: disable=protected-access
  np.testing.assert_allclose(np.asarray(features), REF["features"], **TOL)
  assert np.abs(REF["decoded"]).max() > 1
  np.testing.assert_allclose((np.asarray(tokenizer.decode(REF["indices"])) + 1) / 2,
                             REF["decoded"], **TOL)
  np.testing.assert_allclose((np.asarray(tokenizer.reconstruct(images)) + 1) / 2,
                             REF["reconstruction"], **TOL)
  assert tokenizer.config.model.preset == "maskgit-f16"
  assert dict(tokenizer.config.model.config) == {
      "ch": 32, "ch_mult": [1, 1], "pixel_range": "unit"}


def test_the_pytorch_port_gives_the_ids_and_images_of_the_authors_port():
  """A whole small port: its encoder (port_encoder.bin) with the two-stage TiTok fixture's
  pixel decoder and pixel codes, renamed as the port's own file names them."""
  port = dict(np.load(FIXTURES / "maskgit" / "port_outputs.npz"))
  state = common.state_dict(weights.read_object(str(FIXTURES / "maskgit" / "port_encoder.bin")))
  titok = common.state_dict(weights.read_object(str(FIXTURES / "titok" / "two_stage.bin")))
  state.update({k.replace("pixel_decoder.", "decoder.").replace("pixel_quantize.", "quantize."):
                v for k, v in titok.items() if k.startswith(("pixel_decoder.", "pixel_quantize."))})
  config, variables = convert.sources()["maskgit-vqgan-torch"].convert_state(
      state, "port", image_size=8)
  tokenizer = inference.assemble(config, variables)
  np.testing.assert_array_equal(np.asarray(tokenizer.encode(port["images"] * 2 - 1)),
                                port["indices"])
  assert np.abs(port["decoded"]).max() > 1
  np.testing.assert_allclose((np.asarray(tokenizer.decode(port["indices"])) + 1) / 2,
                             port["decoded"], **TOL)


def test_an_extensionless_flax_checkpoint_reads_as_msgpack(tmp_path):
  state = common.state_dict(weights.read_object(str(CHECKPOINT)))
  assert state["quantizer/codebook"].shape == (64, 16)
  other = tmp_path / "checkpoint_7"
  other.write_bytes(b"PK\x03\x04 not msgpack")
  with pytest.raises(ValueError, match="unknown file type"):
    weights.read_object(str(other))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_the_release_converts_to_the_preset(path):
  manifest, config, _, _ = convert_release(path)
  assert config["model"] == {"name": "vqgan.VQGAN", "preset": "maskgit-f16",
                             "config": {"pixel_range": "unit"}}
  assert manifest["parameters"] == 54_515_587
