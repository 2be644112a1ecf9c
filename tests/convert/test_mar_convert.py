"""MAR converter: the authors' tiny random MAR (tools/fixtures/mar.py) converts to the same
decoder output z, the same diffusion-head output, the same reverse-step distribution and the
same training loss terms; the diffusion schedules equal theirs; every released size's
manifest converts into its preset with the authors' count."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import jaxtok
from jaxtok import build, convert, inference, weights
from jaxtok.convert import common
from jaxtok.losses import diffusion as loss_lib
from jaxtok.models.generators import diffusion as diff
from jaxtok.models.generators.mar import MAR

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mar")
MANIFESTS = sorted(glob.glob(os.path.join(FIXTURES, "..", "manifests", "mar-*.json")))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("mar"))
  convert.convert("mar-b", os.path.join(FIXTURES, "mar.pth"), out, token_shape=[3, 3],
                  num_heads=2)
  return jaxtok.load(out), dict(np.load(os.path.join(FIXTURES, "mar.npz")))


def test_schedules_equal_the_authors():
  ref = np.load(os.path.join(FIXTURES, "mar.npz"))
  np.testing.assert_allclose(diff.make_schedule(1000).betas, ref["train_betas"], rtol=1e-12)
  spaced = diff.make_schedule(1000, 100)
  np.testing.assert_allclose(spaced.betas, ref["sample_betas"], rtol=1e-10)
  np.testing.assert_array_equal(spaced.timesteps, ref["timestep_map"])


def test_transformer_and_head_match_the_authors(converted):
  gen, ref = converted
  model, variables = gen.model, gen.variables
  z = model.apply(variables, ref["latents"], ref["labels"], mask=ref["mask"].reshape(2, 3, 3),
                  drop_cond=jnp.array([False, True]))
  np.testing.assert_allclose(z, ref["z"], atol=1e-4, rtol=0)
  spaced = diff.make_schedule(1000, 100)
  z_flat = ref["z"].reshape(-1, ref["z"].shape[-1])
  out = model.apply(variables, ref["x"], spaced.timesteps[ref["steps"]], z_flat,
                    method=MAR.denoise)
  # The random head's outputs reach 20 (sinusoids of t up to 999 feed it): f32 agreement.
  np.testing.assert_allclose(out, ref["head_out"], atol=5e-4, rtol=0)
  assert np.abs(out - ref["head_out"]).max() / np.abs(ref["head_out"]).max() < 2e-5
  mean, log_var, _ = diff.model_distribution(spaced, jnp.asarray(ref["head_out"]), ref["x"],
                                             jnp.asarray(ref["steps"]))
  np.testing.assert_allclose(log_var, ref["log_variance"], atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(mean, ref["mean"], atol=1e-4, rtol=1e-4)


def test_training_loss_terms_match_the_authors(converted):
  gen, ref = converted
  z_flat = jnp.asarray(ref["z"].reshape(-1, ref["z"].shape[-1]))
  x0 = ref["latents"].reshape(-1, 4)
  predict = lambda x, t: gen.model.apply(gen.variables, x, t, z_flat,  # noqa: E731
                                         method=MAR.denoise)
  _, parts = loss_lib.diffusion_loss_at(predict, diff.make_schedule(1000), x0,
                                        jnp.asarray(ref["train_steps"]), ref["noise"])
  np.testing.assert_allclose(parts["mse"], ref["mse"].mean(), rtol=1e-4)
  np.testing.assert_allclose(parts["vb"], ref["vb"].mean(), rtol=1e-4)


def test_ema_weights_convert_with_use_ema(tmp_path):
  path = os.path.join(FIXTURES, "mar.pth")
  config, ema = convert.sources()["mar-b"].convert_state(
      common.state_dict(weights.read_object(path), use_ema=True), token_shape=[3, 3],
      num_heads=2)
  _, plain = convert.sources()["mar-b"].convert_state(
      common.state_dict(weights.read_object(path)), token_shape=[3, 3], num_heads=2)
  assert config["model"]["depth"] == 2
  np.testing.assert_allclose(ema["params"]["fake_latent"], plain["params"]["fake_latent"] + 0.5,
                             atol=1e-6)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: os.path.basename(p)[:-5])
def test_every_release_converts_to_its_preset(path):
  """The state dict names and shapes of each released file (the authors' code on torch's
  meta device, tools/fixtures/mar.py --manifests) convert into the preset exactly, with
  the authors' parameter count."""
  with open(path) as f:
    manifest = json.load(f)
  source = convert.sources()[manifest["source"]]
  assert source.files == (manifest["file"],)
  config, variables = source.convert_state(common.abstract(manifest["tensors"]),
                                           manifest["file"])
  assert set(config["model"]) == {"name", "preset"}  # the preset exactly
  config = ml_collections.ConfigDict(config)
  model = build.model(config, "float32")
  inference.check_variables(model, variables, "generator", config)
  assert sum(np.size(v) for v in jax.tree.leaves(variables)) == manifest["parameters"]
