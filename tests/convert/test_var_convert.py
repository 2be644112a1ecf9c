"""VAR checkpoints convert exactly: a small VQVAE and VAR built by VAR's own code with random
weights (tools/fixtures/var.py) give the same ids at every scale, images, teacher-forced
logits and greedy samples in jaxtok; every released file's manifest (names, shapes from VAR's
code) converts into its preset with VAR's parameter counts."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import build, cli, convert, inference
from jaxtok.convert import common
from tests.convert.conftest import convert_release

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures"
VAE_FILE = str(FIXTURES / "var" / "vqvae.pth")
VAR_FILE = str(FIXTURES / "var" / "var.pth")
MANIFESTS = sorted((FIXTURES / "manifests").glob("var-*.json"))
SCALES = "patch_nums=[1,2,3,5,8]"  # the fixtures' scales (no tensor holds them)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
  """The fixtures converted by `jaxtok convert` and loaded: (VQVAE, VAR)."""
  root = tmp_path_factory.mktemp("var")
  vae, var = str(root / "vqvae"), str(root / "var")
  assert cli.main(["convert", "--from", "var-vqvae", "--checkpoint", VAE_FILE, "--option",
                   SCALES, "--out", vae]) == 0
  assert cli.main(["convert", "--from", "var-d16", "--checkpoint", VAR_FILE, "--option",
                   f"tokenizer={vae}", "--out", var]) == 0
  return inference.load(vae), inference.load(var)


def test_vqvae_ids_at_every_scale_and_images_equal_vars(loaded):
  tok, _ = loaded
  ref = dict(np.load(FIXTURES / "var" / "vqvae.npz"))
  assert tok.image_size == 16 and tok.model.token_shape((16, 16)) == (103,)
  ids = tok.encode(jnp.asarray(ref["images"]))
  np.testing.assert_array_equal(ids, ref["ids"])  # every scale's map
  np.testing.assert_allclose(tok.decode(ids), ref["decoded"], atol=1e-4)
  coarse = tok.decode(ids[:, :14])  # the first three scales only
  assert coarse.shape == (2, 16, 16, 3) and np.isfinite(coarse).all()


def test_var_logits_and_greedy_samples_equal_vars(loaded):
  tok, gen = loaded
  ref, vae_ref = dict(np.load(FIXTURES / "var" / "var.npz")), np.load(FIXTURES / "var" /
                                                                      "vqvae.npz")
  quantizer = tok.model.quantizer
  q_vars = {"params": tok.variables["params"]["quantizer"]}
  inputs = quantizer.apply(q_vars, jnp.asarray(vae_ref["ids"]), method="next_scale_inputs")
  logits = gen.model.apply(gen.variables, inputs, jnp.asarray(ref["labels"]))
  np.testing.assert_allclose(logits, ref["logits"], atol=1e-4)
  # VAR's cfg=1.5 (its ramp t = 1.5·k/(S−1)) is cfg_scale 2.5 with the linear schedule.
  result = inference.sample_images(gen, tok, num=2, seed=0, class_id=3, cfg_scale=2.5,
                                   temperature=0.0)
  np.testing.assert_array_equal(result["tokens"], ref["greedy_cfg1.5"])
  assert result["images"].shape == (2, 16, 16, 3)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_release_converts_to_its_preset(path):
  _, config, _, model = convert_release(path)
  assert set(config["model"]) == {"name", "preset"}  # the preset exactly
  if build.TRAINED_KINDS[config["trainer"]] == "generator":
    assert model.token_shape == (680,) and model.num_classes == 1000
    vqvae = json.loads((FIXTURES / "manifests" / "var-vqvae.json").read_text())
    released = convert.sources()["var-vqvae"].convert_state(common.abstract(vqvae["tensors"]))
    assert (inference.tokenizer_fingerprint(config["tokenizer"])
            == inference.tokenizer_fingerprint(released[0]))


def test_wrong_scales_are_refused():
  state = common.abstract(json.loads((FIXTURES / "manifests" / "var-vqvae.json").read_text())
                          ["tensors"])
  with pytest.raises(ValueError, match="trained with 10 scales; got 3"):
    convert.sources()["var-vqvae"].convert_state(state, patch_nums=[1, 2, 16])
