"""TiTok 1D tokenizer: shapes, prefixes, nested dropout, published sizes, precision, errors."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.tokenizers import titok as titok_lib
from jaxtok.models.tokenizers.titok import TITOK_SIZES, TiTok, prefix_keep_mask
from jaxtok.models.tokenizers.vit import ViTSize
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.vq import VectorQuantizer

K = 8  # latent tokens of the tiny model
QUANTIZERS = {
    "vq": lambda: VectorQuantizer(codebook_size=32, dim=4, metric="cosine"),
    "fsq": lambda: FSQ(levels=(5, 5, 5)),
}


def tiny_titok(quantizer, **overrides) -> TiTok:
  fields = dict(image_size=16, patch_size=4, num_latent_tokens=K, encoder_size="tiny",
                decoder_size="tiny")
  return TiTok(quantizer=quantizer, **{**fields, **overrides})


def images(seed=0, shape=(2, 16, 16, 3)):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def jit_init(model, x):
  return jax.jit(model.init)(jax.random.key(0), x)


def jit_method(model, method, **kwargs):
  return jax.jit(lambda v, a: model.apply(v, a, method=method, **kwargs))


@functools.cache
def build(name: str):
  model = tiny_titok(QUANTIZERS[name]())
  return model, jit_init(model, images())


@pytest.fixture(scope="module", params=sorted(QUANTIZERS))
def built(request):
  """Both quantizers, for the shape and round-trip tests."""
  return build(request.param)


@pytest.fixture(scope="module")
def vq_built():
  """The published quantizer kind, for the remaining tests (fewer compiles)."""
  return build("vq")


def test_call_shapes_finite_in_eval_and_train(built):
  model, variables = built
  x = images()
  out = jax.jit(model.apply)(variables, x)
  chex.assert_shape(out.reconstruction, x.shape)
  chex.assert_type(out.reconstruction, jnp.float32)
  chex.assert_shape(out.quantizer_output.indices, (2, K))
  chex.assert_type(out.quantizer_output.indices, jnp.int32)
  chex.assert_shape(out.quantizer_output.quantized, (2, K, model.quantizer.code_dim))
  chex.assert_tree_all_finite(out)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["quantizer_state"]))
  train_out, _ = train(variables, x)
  chex.assert_shape(train_out.reconstruction, x.shape)
  chex.assert_tree_all_finite(train_out)


def test_encode_decode_round_trip_matches_call(built):
  model, variables = built
  x = images()
  indices, latents = jit_method(model, "encode", return_latents=True)(variables, x)
  chex.assert_shape(indices, (2, K))
  chex.assert_type(indices, jnp.int32)
  chex.assert_shape(latents, (2, K, model.quantizer.code_dim))
  decoded = jit_method(model, "decode")(variables, indices)
  chex.assert_shape(decoded, x.shape)
  np.testing.assert_allclose(decoded, jax.jit(model.apply)(variables, x).reconstruction,
                             rtol=1e-4, atol=1e-4)
  assert model.token_shape(x.shape) == (K,)


def test_any_prefix_decodes_to_a_different_image(vq_built):
  model, variables = vq_built
  indices = jit_method(model, "encode")(variables, images())
  decode = jit_method(model, "decode")
  decoded = {k: decode(variables, indices[:, :k]) for k in (1, 2, 5, K)}
  for k, image in decoded.items():
    chex.assert_shape(image, (2, 16, 16, 3), custom_message=f"prefix {k}")
    chex.assert_tree_all_finite(image)
  ks = sorted(decoded)
  for a, b in zip(ks, ks[1:]):
    assert float(jnp.abs(decoded[a] - decoded[b]).max()) > 1e-4, (a, b)


def test_prefix_dropout_matches_decoding_the_prefix(vq_built):
  """The training-time keep mask and decode's prefix padding give the decoder one input."""
  model, variables = vq_built
  latents = jit_method(model, "encode", return_latents=True)(variables, images())[1]
  keep = jnp.arange(K)[None, :] < jnp.asarray([3, K])[:, None]
  dropped = jax.jit(lambda v, z, keep: model.apply(
      v, z, keep, method=lambda m, z, keep: m.decoder(z, keep)))(variables, latents, keep)
  decode_latents = jit_method(model, "decode_latents")
  np.testing.assert_allclose(dropped[:1], decode_latents(variables, latents[:1, :3]),
                             rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(dropped[1:], decode_latents(variables, latents[1:]),
                             rtol=1e-4, atol=1e-4)


def test_prefix_keep_mask_draws_several_prefix_lengths():
  draws = np.stack([np.asarray(prefix_keep_mask(jax.random.key(s), 4, K, 2)) for s in range(8)])
  lengths = draws.sum(-1).reshape(-1)
  assert lengths.min() >= 2 and lengths.max() <= K
  assert len(set(lengths.tolist())) >= 4  # several k across keys and examples
  # Every row is a prefix: ones then zeros.
  np.testing.assert_array_equal(draws, np.arange(K) < lengths.reshape(8, 4, 1))


def test_nested_dropout_changes_training_reconstructions_only_when_on(vq_built):
  off, variables = vq_built
  on = off.clone(prefix_dropout_min_tokens=1)  # same parameter tree
  x = images()
  train = jax.jit(lambda seed: on.apply(variables, x, train=True, mutable=["quantizer_state"],
                                        rngs={"dropout": jax.random.key(seed)})[0])
  recon = [train(seed).reconstruction for seed in range(4)]
  assert any(float(jnp.abs(recon[0] - r).max()) > 1e-4 for r in recon[1:])
  # Off: train=True needs no dropout rng and decodes all K tokens, as in evaluation.
  plain = jax.jit(lambda v: off.apply(v, x, train=True, mutable=["quantizer_state"])[0])
  np.testing.assert_allclose(plain(variables).reconstruction,
                             jax.jit(off.apply)(variables, x).reconstruction,
                             rtol=1e-5, atol=1e-5)


# The published presets' parameter counts (S-128, B-64, L-32) are checked in test_presets.py.
def test_published_presets_give_their_token_counts():
  quantizer = VectorQuantizer(codebook_size=titok_lib.CODEBOOK["codebook_size"],
                              dim=titok_lib.CODEBOOK["code_dim"], metric="cosine")
  for preset in ("S-128", "B-64", "L-32"):
    model = TiTok.from_preset(preset, quantizer=quantizer)
    assert model.token_shape((256, 256)) == (int(preset.split("-")[1]),)


def test_size_table_holds_the_published_widths():
  assert TITOK_SIZES["small"] == ViTSize(width=512, depth=8, num_heads=8, mlp_dim=2048)
  assert TITOK_SIZES["base"] == ViTSize(width=768, depth=12, num_heads=12, mlp_dim=3072)
  assert TITOK_SIZES["large"] == ViTSize(width=1024, depth=24, num_heads=16, mlp_dim=4096)


def test_bf16_compute_gives_finite_gradients():
  model = tiny_titok(VectorQuantizer(codebook_size=32, dim=4, metric="cosine"),
                     dtype=jnp.bfloat16, prefix_dropout_min_tokens=2)
  x = images()
  params = nn.unbox(jit_init(model, x))["params"]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))

  def loss(params):
    out = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
    return jnp.mean((out.reconstruction - x) ** 2) + out.quantizer_output.loss

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  chex.assert_tree_all_finite((value, grads))
  assert float(jnp.abs(grads["encoder"]["latent_tokens"]).max()) > 0  # reaches the encoder


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 32, 32, 3), np.float32), "must be 16x16"),
    (np.zeros((2, 18, 18, 3), np.float32), "divisible"),
    (np.zeros((2, 3, 16, 16), np.float32), "NCHW"),
    (np.full((2, 16, 16, 3), 2.0, np.float32), r"\[-1, 1\]"),
])
def test_bad_images_raise_clear_errors(vq_built, bad, message):
  model, variables = vq_built
  with pytest.raises((ValueError, TypeError), match=message):
    model.apply(variables, bad, method="encode")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, K + 1), np.int32), rf"1 <= n <= {K}"),  # a prefix longer than K
    (np.zeros((2, 0), np.int32), rf"1 <= n <= {K}"),
    (np.zeros((2, K), np.float32), "integer"),
    (np.full((2, K), 10_000, np.int32), "must lie in"),
    (np.zeros((2, 2, 2), np.int32), "leading axes"),  # extra axes FSQ does not take
])
def test_bad_tokens_raise_clear_errors(vq_built, bad, message):
  model, variables = vq_built
  with pytest.raises((ValueError, TypeError), match=message):
    model.apply(variables, bad, method="decode")


def test_bad_configuration_and_latents_raise_clear_errors(vq_built):
  model, variables = vq_built
  with pytest.raises(ValueError, match="prefix_dropout_min_tokens"):
    model.clone(prefix_dropout_min_tokens=K + 1).apply(variables, images())
  with pytest.raises(ValueError, match="unknown TiTok preset"):
    TiTok.from_preset("XL-16", quantizer=model.quantizer)
  with pytest.raises(ValueError, match="latents must be"):
    model.apply(variables, jnp.zeros((2, K + 1, 4)), method="decode_latents")


def test_two_stage_presets_have_the_released_parameter_counts():
  # tokenizer_titok_{s128,b64,l32}.bin, counted by tools/fixtures/titok.py from the authors'
  # TiTok(config) with finetune_decoder=True (MaskGIT-VQGAN decoder and codebook included).
  from jaxtok.models.tokenizers.titok_two_stage import TiTokTwoStage  # pylint: disable=g-import-not-at-top
  quantizer = VectorQuantizer(codebook_size=4096, dim=12, metric="cosine")
  x = jnp.zeros((1, 256, 256, 3))
  for preset, count in (("S-128", 83_674_639), ("B-64", 204_814_095)):
    model = TiTokTwoStage.from_preset(preset, quantizer=quantizer)
    shapes = jax.eval_shape(lambda m=model: nn.meta.unbox(m.init(jax.random.key(0), x)))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"])) == count
    assert (model.pixel_range, model.legacy_token_layout) == ("unit", True)
  with pytest.raises(ValueError, match="pixel_range must be one of"):
    tiny_titok(QUANTIZERS["vq"](), pixel_range="0-1").init(jax.random.key(0), images())


def test_unit_pixel_range_maps_the_api_range_at_both_edges(vq_built):
  # The same weights with pixel_range="unit" see (x + 1) / 2 and give 2 y - 1.
  model, variables = vq_built
  unit = model.clone(pixel_range="unit")

  @jax.jit
  def both(v, x):
    ids = unit.apply(v, x, method="encode")
    return (ids, model.apply(v, (x + 1) / 2, method="encode"),
            unit.apply(v, ids, method="decode"), model.apply(v, ids, method="decode"))

  ids, want_ids, got, want = both(variables, images())
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(got, 2 * want - 1, atol=1e-5)
