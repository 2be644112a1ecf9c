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
from jaxtok.convert import common, mar_vae
from jaxtok.losses import diffusion as loss_lib
from jaxtok.models.generators import diffusion as diff
from jaxtok.models.generators import mar as mar_model
from jaxtok.models.generators.mar import MAR
from tests.convert.conftest import convert_release

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mar")
MANIFESTS = sorted(p for p in glob.glob(os.path.join(FIXTURES, "..", "manifests", "mar-*.json"))
                   if not p.endswith("kl16.json"))  # the generators'; the VAE's below
KL16_MANIFEST = os.path.join(FIXTURES, "..", "manifests", "mar-kl16.json")


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
  _, config, _, _ = convert_release(path)
  assert set(config["model"]) == {"name", "preset", "latent_scale"}  # the preset exactly
  assert config["model"]["latent_scale"] == 0.2325  # MAR's vae_scale_factor
  assert config["tokenizer"] == mar_vae.kl16_config(256)


# -- the KL-16 VAE (tools/fixtures/mar_vae.py) and the pairing ---------------------------------

@pytest.fixture(scope="module")
def kl16(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("kl16"))
  convert.convert("mar-kl16", os.path.join(FIXTURES, "kl16.ckpt"), out, image_size=16)
  return jaxtok.load(out), dict(np.load(os.path.join(FIXTURES, "kl16.npz")))


def test_kl16_posterior_and_decode_match_the_authors(kl16):
  tok, ref = kl16
  assert dict(tok.config.model.config) == {
      "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1, "decoder_res_blocks": 2,
      "z_channels": 4, "double_z": True, "decoder_level_attention": False}
  z = tok.model.apply(tok.variables, ref["images"],
                      method=lambda m, x: m._latents(x))  # pylint: disable=protected-access
  mean, logvar = np.split(np.asarray(z), 2, axis=-1)
  np.testing.assert_allclose(mean, ref["mean"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(logvar, ref["logvar"], atol=1e-4, rtol=0)
  assert np.abs(ref["decoded"]).max() > 1
  decoded = tok.model.apply(tok.variables, ref["mean"], method="decode_latents")
  np.testing.assert_allclose(np.asarray(decoded), ref["decoded"], atol=1e-4, rtol=0)
  # Not training, the KL bottleneck passes the posterior's mean, as MAR's decode of it.
  np.testing.assert_allclose(np.asarray(tok.reconstruct(ref["images"])), ref["decoded"],
                             atol=1e-4, rtol=0)


def _abstract_export(path: str, kind: str) -> tuple[dict, dict]:
  """(config, variables) of a manifest's conversion, checked against its model and count."""
  with open(path) as f:
    manifest = json.load(f)
  source = convert.sources()[manifest["source"]]
  assert source.files == (manifest["file"],)
  config, variables = source.convert_state(common.abstract(manifest["tensors"]),
                                           manifest["file"])
  cfg = ml_collections.ConfigDict(config)
  inference.check_variables(build.model(cfg, "float32"), variables, kind, cfg)
  assert sum(np.size(v) for v in jax.tree.leaves(variables)) == manifest["parameters"]
  return config, variables


def _loaded(config: dict, kind: str):
  """A Loaded* holding only the model and config (all check_pair reads)."""
  cfg = ml_collections.ConfigDict(config)
  loaded = inference.LoadedTokenizer if kind == "tokenizer" else inference.LoadedGenerator
  return loaded(build.model(cfg, "float32"), {}, cfg)


def test_kl16_release_converts_with_the_authors_count():
  """kl16.ckpt's names and shapes (AutoencoderKL(16, (1, 1, 2, 2, 4)) on torch's meta device)
  convert into exactly the config MAR exports name as their tokenizer."""
  config, _ = _abstract_export(KL16_MANIFEST, "tokenizer")
  assert config == mar_vae.kl16_config(256)


def test_converted_generators_pair_with_their_tokenizers():
  kl16_config, _ = _abstract_export(KL16_MANIFEST, "tokenizer")
  manifests = os.path.join(FIXTURES, "..", "manifests")
  maskgit_config, _ = _abstract_export(os.path.join(manifests, "maskgit-vqgan-torch.json"),
                                       "tokenizer")
  mar_config, _ = _abstract_export(os.path.join(manifests, "mar-b.json"), "generator")
  rar_config, _ = _abstract_export(os.path.join(manifests, "rar-b.json"), "generator")
  kl16_tok, maskgit_tok = _loaded(kl16_config, "tokenizer"), _loaded(maskgit_config, "tokenizer")
  mar_gen, rar_gen = _loaded(mar_config, "generator"), _loaded(rar_config, "generator")
  inference.check_pair(mar_gen, kl16_tok)
  inference.check_pair(rar_gen, maskgit_tok)
  for gen, tok in ((mar_gen, maskgit_tok), (rar_gen, kl16_tok)):
    with pytest.raises(ValueError, match="not the one that made"):
      inference.check_pair(gen, tok)


def test_tiny_mar_takes_a_tokenizer_export_of_its_grid(kl16, converted, tmp_path):
  gen, _ = converted
  assert "tokenizer" not in gen.config  # 4-channel latents: not kl16's
  with pytest.raises(ValueError, match="latents of 16 channels; the generator was trained on 4"):
    inference.check_pair(gen, _loaded(mar_vae.kl16_config(48), "tokenizer"))  # 3x3 of 16
  tok, _ = kl16  # latents of 4 channels, f2
  mar = os.path.join(FIXTURES, "mar.pth")
  with pytest.raises(ValueError, match=r"tokenizer .*makes \(8, 8\) tokens of 0 codes and 4 "
                     r"channels; the generator takes \(3, 3\) tokens"):
    convert.convert("mar-b", mar, str(tmp_path / "x"), token_shape=[3, 3], num_heads=2,
                    tokenizer=_tok_dir(tok, 16, tmp_path / "t16"))
  config, _ = convert.sources()["mar-b"].convert_state(
      common.state_dict(weights.read_object(mar)), token_shape=[3, 3], num_heads=2,
      tokenizer=_tok_dir(tok, 6, tmp_path / "t6"))
  assert config["tokenizer"]["data"]["image_size"] == 6
  assert config["tokenizer"]["model"] == tok.config.model.to_dict()
  with pytest.raises(ValueError, match=r"latent_scale must be a finite number > 0 .* got 0"):
    convert.convert("mar-b", mar, str(tmp_path / "y"), token_shape=[3, 3], num_heads=2,
                    latent_scale=0)


def _tok_dir(tok, image_size: int, path) -> str:
  """An export directory holding `tok`'s config (what the option reads) at `image_size`."""
  path.mkdir()
  config = tok.config.to_dict()
  config["data"]["image_size"] = image_size
  (path / inference.CONFIG_FILE).write_text(json.dumps(config))
  return str(path)


def test_sample_returns_the_tokenizers_latents(converted, monkeypatch):
  """MAR decodes sampled_tokens / vae_scale_factor: `sample` divides the model's draw by
  latent_scale (the draw itself stubbed: only the scaling is under test here)."""
  gen, _ = converted
  monkeypatch.setattr(mar_model, "_sample", lambda *args: jnp.full((2, 3, 3, 4), 0.5))
  model = gen.model.clone(latent_scale=0.25)
  out = model.sample(gen.variables["params"], 0, num_samples=2, num_steps=2)
  np.testing.assert_array_equal(np.asarray(out), np.full((2, 3, 3, 4), 2.0, np.float32))
