"""taming-transformers VQGANs convert exactly: a small VQModel built by the authors' code with
random weights and a training-loss discriminator (tools/fixtures/taming.py), saved as
Lightning's last.ckpt, gives the same ids, latents and images in jaxtok; the released f16
ImageNet checkpoints' names and shapes convert into the "taming-f16" preset's variables with
the authors' parameter counts, their loss tensors dropped."""

import pathlib

import numpy as np
import pytest

import jaxtok
from jaxtok import cli, convert, weights
from jaxtok.convert import common
from tests.convert.conftest import convert_release

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
CHECKPOINT = str(FIXTURES / "taming" / "last.ckpt")
REF = dict(np.load(FIXTURES / "taming" / "outputs.npz"))
MANIFESTS = sorted((FIXTURES / "manifests").glob("taming-*.json"))
TOL = dict(atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  out = tmp_path_factory.mktemp("taming") / "export"
  assert cli.main(["convert", "--from", "taming-vqgan-f16-1024", "--checkpoint", CHECKPOINT,
                   "--option", "image_size=8", "--out", str(out)]) == 0
  return jaxtok.load(str(out))


def test_ids_latents_and_images_equal_the_authors(tokenizer):
  images = REF["images"]
  np.testing.assert_array_equal(np.asarray(tokenizer.encode(images)), REF["indices"])
  latents = tokenizer.model.apply(tokenizer.variables, images,
                                  method=lambda m, x: m._latents(x))  # pylint: disable=protected-access
  np.testing.assert_allclose(np.asarray(latents), REF["latents"], **TOL)
  assert np.abs(REF["decoded"]).max() > 1
  np.testing.assert_allclose(np.asarray(tokenizer.decode(REF["indices"])), REF["decoded"], **TOL)
  np.testing.assert_allclose(np.asarray(tokenizer.reconstruct(images)), REF["reconstruction"],
                             **TOL)
  assert dict(tokenizer.config.model.config) == {
      "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "decoder_res_blocks": 2,
      "z_channels": 32}
  assert tokenizer.config.quantizer.metric == "l2"


def test_attention_jaxtok_cannot_place_is_named():
  state = common.state_dict(weights.read_object(CHECKPOINT))
  state["encoder.down.0.attn.0.q.weight"] = state["encoder.down.1.attn.0.q.weight"]
  with pytest.raises(ValueError, match=r"attention at a level other than the lowest .*"
                     r"encoder\.down\.0\.attn\.0\.q\.weight"):
    convert.sources()["taming-vqgan-f16-1024"].convert_state(state, "last.ckpt", image_size=8)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_release_converts_to_the_preset(path):
  manifest, config, _, _ = convert_release(path)
  assert any(k.startswith("loss.perceptual_loss.") for k in manifest["tensors"])  # dropped
  assert config["model"] == {"name": "vqgan.VQGAN", "preset": "taming-f16"}
