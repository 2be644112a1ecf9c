"""ViT-VQGAN-style tokenizer: shapes, round trips, quantizer plug-in, precision, input errors."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import quantizers as q
from jaxtok.models.tokenizers.titok import TiTok
from jaxtok.models.tokenizers.vit import VIT_SIZES, ViTSize, ViTTokenizer
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.vq import VectorQuantizer

QUANTIZERS = {
    "vq": lambda: VectorQuantizer(codebook_size=32, dim=4, metric="cosine"),
    "fsq": lambda: FSQ(levels=(5, 5, 5)),
}


def tiny_vit(quantizer, **overrides) -> ViTTokenizer:
  fields = dict(encoder_size="tiny", decoder_size="tiny", patch_size=4, image_size=16)
  return ViTTokenizer(quantizer=quantizer, **{**fields, **overrides})


def images(seed=0, shape=(2, 16, 16, 3)):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32))


def jit_init(model, x):
  return jax.jit(model.init)(jax.random.key(0), x)


@functools.cache
def build(name: str):
  model = tiny_vit(QUANTIZERS[name]())
  return model, jit_init(model, images())


@pytest.fixture(scope="module", params=sorted(QUANTIZERS))
def built(request):
  """Both quantizers, for the shape and round-trip tests."""
  return build(request.param)


@pytest.fixture(scope="module")
def fsq_built():
  """One model for the remaining tests (fewer compiles)."""
  return build("fsq")


def test_call_shapes_finite_in_eval_and_train(built):
  model, variables = built
  x = images()
  out = jax.jit(model.apply)(variables, x)
  chex.assert_shape([out.reconstruction, out.quantizer_output.indices], [x.shape, (2, 4, 4)])
  chex.assert_type([out.reconstruction, out.quantizer_output.indices], [jnp.float32, jnp.int32])
  chex.assert_tree_all_finite(out)
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["quantizer_state"]))
  train_out, _ = train(variables, x)
  chex.assert_shape(train_out.reconstruction, x.shape)
  chex.assert_tree_all_finite(train_out)


def test_encode_decode_round_trip_matches_call(built):
  model, variables = built
  x = images()
  indices, latents = jax.jit(lambda v, x: model.apply(v, x, return_latents=True,
                                                      method="encode"))(variables, x)
  chex.assert_shape([indices, latents], [(2, 4, 4), (2, 4, 4, model.quantizer.code_dim)])
  chex.assert_type(indices, jnp.int32)
  decoded = jax.jit(lambda v, i: model.apply(v, i, method="decode"))(variables, indices)
  chex.assert_shape(decoded, x.shape)
  chex.assert_type(decoded, jnp.float32)
  np.testing.assert_allclose(decoded, jax.jit(model.apply)(variables, x).reconstruction,
                             rtol=1e-4, atol=1e-4)


def test_token_shape_on_an_unbound_module():
  model = tiny_vit(FSQ(levels=(5, 5, 5)))
  assert model.token_shape((16, 16)) == (4, 4)
  assert model.token_shape((2, 16, 16, 3)) == (4, 4)
  assert model.downsample_factor == 4
  rope_model = tiny_vit(FSQ(levels=(5, 5, 5)), positions="rope2d")
  assert rope_model.token_shape((32, 48, 3)) == (8, 12)
  with pytest.raises(ValueError, match="must be 16x16"):
    model.token_shape((32, 32))


def test_rope2d_positions_accept_any_divisible_size():
  model = tiny_vit(FSQ(levels=(5, 5, 5)), positions="rope2d")
  variables = jit_init(model, images())
  assert "encoder_pos" not in variables["params"]
  big = images(2, (1, 32, 24, 3))
  out = jax.jit(model.apply)(variables, big)
  chex.assert_shape([out.reconstruction, out.quantizer_output.indices], [big.shape, (1, 8, 6)])
  chex.assert_tree_all_finite(out)
  decoded = jax.jit(lambda v, i: model.apply(v, i, method="decode"))(
      variables, out.quantizer_output.indices)
  np.testing.assert_allclose(decoded, out.reconstruction, rtol=1e-4, atol=1e-4)


def test_uint8_images_are_scaled_to_minus_one_one(fsq_built):
  model, variables = fsq_built
  pixels = np.random.default_rng(3).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
  encode = jax.jit(lambda v, x: model.apply(v, x, method="encode"))
  from_uint8 = encode(variables, pixels)
  from_float = encode(variables, jnp.asarray(pixels / 127.5 - 1, jnp.float32))
  np.testing.assert_array_equal(from_uint8, from_float)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((16, 16, 3), np.float32), "4-D NHWC"),
    (np.zeros((2, 3, 16, 16), np.float32), "looks like NCHW"),
    (np.zeros((2, 18, 18, 3), np.float32), "divisible"),
    (np.zeros((2, 32, 32, 3), np.float32), "must be 16x16"),
    (np.full((2, 16, 16, 3), 255.0, np.float32), r"\[-1, 1\]"),
    (np.zeros((2, 16, 16, 3), np.int32), "uint8"),
    (np.full((2, 16, 16, 3), np.nan, np.float32), "NaN"),
])
def test_bad_images_raise_clear_errors(fsq_built, bad, message):
  model, variables = fsq_built
  with pytest.raises((ValueError, TypeError), match=message):
    model.apply(variables, bad, method="encode")


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 4, 4), np.float32), "integer"),
    (np.full((2, 4, 4), 10_000, np.int32), "must lie in"),
    (np.full((2, 4, 4), -1, np.int32), "must lie in"),
    (np.zeros((2, 3, 3), np.int32), r"\[B, 4, 4"),
    (np.zeros((2, 16), np.int32), r"\[B, 4, 4"),
    (np.zeros((2, 4, 4, 2), np.int32), "leading axes"),  # residual-style ids
])
def test_bad_tokens_raise_clear_errors(fsq_built, bad, message):
  model, variables = fsq_built
  with pytest.raises((ValueError, TypeError), match=message):
    model.apply(variables, bad, method="decode")


def test_bad_latents_and_sizes_raise_clear_errors(fsq_built):
  model, variables = fsq_built
  with pytest.raises(ValueError, match="latents must be"):
    model.apply(variables, jnp.zeros((2, 4, 4, 99)), method="decode_latents")
  with pytest.raises(ValueError, match="unknown size"):
    tiny_vit(FSQ(levels=(5, 5, 5)), encoder_size="XXL").init(jax.random.key(0), images())


def test_bf16_compute_gives_finite_gradients():
  model = tiny_vit(VectorQuantizer(codebook_size=32, dim=4, metric="cosine"),
                   dtype=jnp.bfloat16, decoder_size=ViTSize(width=32, depth=1, num_heads=4,
                                                            mlp_dim=32))
  x = images()
  params = nn.unbox(jit_init(model, x))["params"]
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))

  def loss(params):
    out = model.apply({"params": params}, x, train=True)
    return jnp.mean((out.reconstruction - x) ** 2) + out.quantizer_output.loss

  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  chex.assert_tree_all_finite((value, grads))
  assert float(jnp.abs(grads["patch_embed"]["kernel"]).max()) > 0  # reaches the encoder


def test_size_table_holds_the_paper_sizes():
  assert VIT_SIZES["S"] == ViTSize(width=512, depth=8, num_heads=8, mlp_dim=2048)
  assert VIT_SIZES["B"] == ViTSize(width=768, depth=12, num_heads=12, mlp_dim=3072)
  assert VIT_SIZES["L"] == ViTSize(width=1280, depth=32, num_heads=16, mlp_dim=5120)


def _all_quantizers():
  return {
      "vq": q.VectorQuantizer(codebook_size=32, dim=4),
      "fsq": q.FSQ(levels=(5, 5, 5)),
      "lfq": q.LFQ(bits=4),
      "bsq": q.BSQ(bits=4),
      "simvq": q.SimVQ(codebook_size=32, dim=4),
      "kl": q.KLQuantizer(dim=4),
      "group": q.GroupQuantizer(quantizer=q.FSQ(levels=(5, 5)), groups=2),
      "residual_vq": q.ResidualVQ(quantizer=q.VectorQuantizer(codebook_size=32, dim=4),
                                  num_quantizers=2),
      "residual_fsq": q.ResidualFSQ(levels=(5, 5, 5), num_quantizers=2),
  }


@pytest.mark.parametrize("tokenizer", ["vit", "titok"])
@pytest.mark.parametrize("name", sorted(_all_quantizers()))
def test_every_quantizer_plugs_into_every_tokenizer(tokenizer, name):
  """Shapes only (eval_shape: traced, never compiled): train step, encode and decode."""
  quantizer = _all_quantizers()[name]
  if tokenizer == "vit":
    model, grid = tiny_vit(quantizer), (4, 4)
  else:
    model, grid = TiTok(quantizer=quantizer, image_size=16, patch_size=4, num_latent_tokens=8,
                        encoder_size="tiny", decoder_size="tiny"), (8,)
  x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  rngs = {"quantizer": jax.random.key(1), "dropout": jax.random.key(2)}
  out, _ = jax.eval_shape(lambda v, x: model.apply(
      v, x, train=True, mutable=["quantizer_state"], rngs=rngs), variables, x)
  chex.assert_shape([out.reconstruction, out.quantizer_output.quantized],
                    [x.shape, (2, *grid, quantizer.code_dim)])
  assert out.quantizer_output.indices.shape[1:1 + len(grid)] == grid
  decoded = jax.eval_shape(lambda v, z: model.apply(v, z, method="decode_latents"),
                           variables, out.quantizer_output.quantized)
  chex.assert_shape(decoded, x.shape)
  if name != "kl":  # KL has no token ids to decode
    decoded = jax.eval_shape(lambda v, i: model.apply(v, i, method="decode"),
                             variables, out.quantizer_output.indices)
    chex.assert_shape(decoded, x.shape)
