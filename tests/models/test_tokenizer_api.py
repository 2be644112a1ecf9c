"""The Tokenizer API (models/tokenizers/tokenizer.py): its shared input checks (with the id
range check that works under jit, quantizers.base.checked_indices), and the API on the tiny
VQGAN with every kind of quantizer plugged in."""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.tokenizers import Tokenizer, TokenizerOutput, check_tokens, prepare_images
from jaxtok.models.tokenizers.vqgan import VQGAN
from jaxtok.quantizers.base import IndexRangeWarning, QuantizerOutput, checked_indices
from jaxtok.quantizers.bsq import BSQ
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.group import GroupQuantizer
from jaxtok.quantizers.kl import KLQuantizer
from jaxtok.quantizers.lfq import LFQ
from jaxtok.quantizers.residual import ResidualFSQ, ResidualVQ
from jaxtok.quantizers.vq import VectorQuantizer

# RBG keys: on the CPU, XLA compiles threefry initializers of ~150 params for minutes.
KEY = jax.random.key(0, impl="rbg")
IMAGES = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)


# ------------------------------------------------------------ prepare_images / check_tokens

def test_prepare_images_scales_uint8_and_keeps_float_dtypes():
  pixels = np.array([0, 51, 255], np.uint8).reshape(1, 1, 3, 1).repeat(3, -1)
  pixels = np.pad(pixels, ((0, 0), (0, 3), (0, 1), (0, 0)))
  out = prepare_images(pixels, factor=4)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out[0, 0, :3, 0], [-1.0, -0.6, 1.0], atol=1e-6)
  assert prepare_images(jnp.zeros((1, 4, 4, 3), jnp.bfloat16), factor=4).dtype == jnp.bfloat16


@pytest.mark.parametrize("images,error,match", [
    (np.zeros((16, 16, 3), np.float32), ValueError, r"4-D NHWC batch .* got shape \(16, 16, 3\)"),
    (np.zeros((2, 3, 16, 16), np.float32), ValueError, "looks like NCHW"),
    (np.zeros((2, 16, 16, 4), np.float32), ValueError, "3 channels last"),
    (np.zeros((2, 15, 16, 3), np.float32), ValueError,
     r"H=15 and W=16 must both be divisible by .* factor 4; got shape \(2, 15, 16, 3\)"),
    (np.zeros((2, 16, 18, 3), np.float32), ValueError, "W=18 .* factor 4"),
    (np.zeros((2, 16, 16, 3), np.int32), TypeError,
     r"uint8 in \[0, 255\] or floating point in \[-1, 1\]; got dtype int32"),
    (np.zeros((2, 16, 16, 3), bool), TypeError, "got dtype bool"),
    (np.full((2, 16, 16, 3), 200.0, np.float32), ValueError, r"\[-1, 1\].*look like \[0, 255\]"),
    (np.full((2, 16, 16, 3), -1.5, np.float32), ValueError, r"must lie in \[-1, 1\]"),
    (np.full((2, 16, 16, 3), np.nan, np.float32), ValueError, "NaN"),
])
def test_prepare_images_rejects(images, error, match):
  with pytest.raises(error, match=match):
    prepare_images(images, factor=4)


def test_prepare_images_under_jit_checks_shape_and_dtype_only():
  out = jax.jit(lambda x: prepare_images(x, factor=4))(jnp.full((1, 4, 4, 3), 5.0))
  assert float(out.max()) == 5.0  # values are unknown to the check while tracing
  with pytest.raises(ValueError, match="divisible"):
    jax.jit(lambda x: prepare_images(x, factor=4))(jnp.zeros((1, 6, 4, 3)))


@pytest.mark.parametrize("indices,kwargs,error,match", [
    (np.zeros((2, 4, 4), np.float32), {}, TypeError, "integer array"),
    (np.full((2, 4, 4), 8), {}, ValueError, r"lie in \[0, 8\); got values in \[8, 8\]"),
    (np.full((2, 4, 4), -1), {}, ValueError, r"lie in \[0, 8\)"),
    (np.zeros((2, 4, 5), np.int32), {}, ValueError,
     r"shape \[B, 4, 4, \.\.\.\] .* got \(2, 4, 5\)"),
    (np.zeros((2, 16), np.int32), {}, ValueError, r"got \(2, 16\)"),
    (np.zeros((2, 4, 4), np.int32), {"extra_shape": (3,)}, ValueError, r"\[B, 4, 4, 3\]"),
])
def test_check_tokens_rejects(indices, kwargs, error, match):
  with pytest.raises(error, match=match):
    check_tokens(indices, token_shape=(4, 4), codebook_size=8, **kwargs)


def test_check_tokens_accepts_grids_and_1d_prefixes():
  check_tokens(np.zeros((2, 4, 4, 3), np.int32), token_shape=(4, 4), codebook_size=8,
               extra_shape=(3,))
  check_tokens(np.zeros((2, 5), np.int32), token_shape=(32,), codebook_size=8, allow_prefix=True)
  with pytest.raises(ValueError, match="prefix"):
    check_tokens(np.zeros((2, 33), np.int32), token_shape=(32,), codebook_size=8,
                 allow_prefix=True)


def test_checked_indices_raises_eagerly_and_clamps_with_a_warning_under_jit():
  ids = np.array([[0, 7], [3, 5]], np.int32)
  bad = np.array([[0, 8], [-2, 5]], np.int32)
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 8\); got values in \[-2, 8\]"):
    checked_indices(bad, 8, name="ids")
  with pytest.raises(TypeError, match="integer array"):
    jax.jit(lambda x: checked_indices(x, 8))(bad.astype(np.float32))
  jitted = jax.jit(lambda x: checked_indices(x, 8, name="ids"))
  with pytest.warns(IndexRangeWarning,
                    match=r"ids: 2 of 4 ids lie outside \[0, 8\) \(values in \[-2, 8\]\)"):
    np.testing.assert_array_equal(jitted(bad), [[0, 7], [0, 5]])
    jax.effects_barrier()
  with pytest.warns(IndexRangeWarning) as record:  # under vmap: one report per row
    jax.vmap(jitted)(bad)
    jax.effects_barrier()
  assert sorted(str(w.message).split(";")[0] for w in record) == [
      "ids: 1 of 2 ids lie outside [0, 8) (values in [-2, 5])",
      "ids: 1 of 2 ids lie outside [0, 8) (values in [0, 8])"]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = jitted(ids)
    jax.effects_barrier()
  assert not caught and out.dtype == jnp.int32
  np.testing.assert_array_equal(out, ids)
  np.testing.assert_array_equal(checked_indices(ids, 8), ids)


# ------------------------------------------------------------ the API on a tiny VQGAN

@pytest.fixture(scope="module")
def tiny():
  model = VQGAN.from_preset("tiny", quantizer=VectorQuantizer(codebook_size=32, dim=8))
  return model, jax.jit(model.init)(KEY, IMAGES)


def test_vqgan_is_a_tokenizer_and_token_shape_needs_no_params():
  model = VQGAN.from_preset("llamagen-vq16", quantizer=VectorQuantizer(codebook_size=8, dim=8))
  assert isinstance(model, Tokenizer) and model.downsample_factor == 16
  assert model.token_shape((256, 256)) == (16, 16)
  assert model.token_shape((2, 256, 384, 3)) == (16, 24)
  with pytest.raises(ValueError, match="H=250 .* downsampling factor 16"):
    model.token_shape((250, 256, 3))


def test_encode_decode_round_trip(tiny):
  model, variables = tiny
  pixels = np.asarray(jax.random.randint(jax.random.key(3), (2, 16, 16, 3), 0, 256), np.uint8)

  @jax.jit
  def run(variables):
    apply = lambda *a, **k: model.apply(variables, *a, **k)
    ids, latents = apply(IMAGES, method="encode", return_latents=True)
    return (ids, latents, apply(IMAGES, method="encode"), apply(IMAGES),
            apply(ids, method="decode", image_shape=(16, 16)),
            apply(latents, method="decode_latents"),
            apply(pixels, method="encode"), apply(pixels / 127.5 - 1, method="encode"))

  ids, latents, ids_again, out, decoded, decoded_latents, ids_uint8, ids_scaled = run(variables)
  assert model.token_shape(IMAGES.shape) == (8, 8)
  chex.assert_shape([ids, latents], [(2, 8, 8), (2, 8, 8, 8)])
  chex.assert_type(ids, jnp.int32)
  np.testing.assert_array_equal(ids_again, ids)
  assert isinstance(out, TokenizerOutput) and isinstance(out.quantizer_output, QuantizerOutput)
  chex.assert_shape(decoded, IMAGES.shape)
  chex.assert_type(decoded, jnp.float32)
  chex.assert_tree_all_finite(decoded)
  # decode(encode(x)) and decode_latents(latents) are the eval-mode forward pass.
  np.testing.assert_allclose(decoded, out.reconstruction, atol=1e-5)
  np.testing.assert_allclose(decoded_latents, out.reconstruction, atol=1e-5)
  # uint8 pixels are scaled to [-1, 1].
  np.testing.assert_array_equal(ids_uint8, ids_scaled)


BAD_IMAGES = [
    (np.zeros((16, 16, 3), np.float32), ValueError, "4-D NHWC"),
    (np.zeros((2, 3, 16, 16), np.float32), ValueError, "NCHW"),
    (np.zeros((2, 15, 16, 3), np.float32), ValueError, "H=15 .* factor 2"),
    (np.zeros((2, 16, 16, 3), np.int32), TypeError, "dtype int32"),
    (np.full((2, 16, 16, 3), 255.0, np.float32), ValueError, r"\[-1, 1\]"),
]


@pytest.mark.parametrize("method", ["__call__", "encode"])
@pytest.mark.parametrize("images,error,match", BAD_IMAGES)
def test_model_rejects_bad_images(tiny, method, images, error, match):
  model, variables = tiny
  with pytest.raises(error, match=match):
    model.apply(variables, images, method=method)


@pytest.mark.parametrize("indices,kwargs,error,match", [
    (np.zeros((2, 8, 8), np.float32), {}, TypeError, "integer array"),
    (np.full((2, 8, 8), 32, np.int32), {}, ValueError, r"lie in \[0, 32\)"),
    (np.zeros((2, 8, 6), np.int32), {"image_shape": (16, 16)}, ValueError,
     r"\[B, 8, 8, \.\.\.\] .* got \(2, 8, 6\)"),
    (np.zeros((2, 64), np.int32), {}, ValueError, "token grid"),
    (np.zeros((2, 8, 8, 2), np.int32), {}, ValueError, "quantizer's index layout"),
])
def test_model_rejects_bad_tokens(tiny, indices, kwargs, error, match):
  model, variables = tiny
  with pytest.raises(error, match=match):
    model.apply(variables, indices, method="decode", **kwargs)


def test_decode_latents_checks_code_dim(tiny):
  model, variables = tiny
  with pytest.raises(ValueError, match=r"\[B, h, w, 8\]"):
    model.apply(variables, jnp.zeros((2, 8, 8, 4)), method="decode_latents")


# ------------------------------------------------------------ any quantizer plugs in

QUANTIZERS = {  # name: (quantizer, index dims per token)
    "vq": (VectorQuantizer(codebook_size=32, dim=8), ()),
    "vq-cosine-ema": (VectorQuantizer(codebook_size=32, dim=8, metric="cosine",
                                      use_ema=True), ()),
    "fsq": (FSQ(levels=(8, 5, 5, 5)), ()),
    "lfq": (LFQ(bits=6), ()),
    "bsq": (BSQ(bits=6), ()),
    "residual-vq": (ResidualVQ(VectorQuantizer(codebook_size=16, dim=8), num_quantizers=3),
                    (3,)),
    "residual-fsq": (ResidualFSQ(levels=(5, 5, 5), num_quantizers=2), (2,)),
    "group-fsq": (GroupQuantizer(FSQ(levels=(5, 5, 5)), groups=2), (2,)),
    "kl": (KLQuantizer(dim=4), None),  # continuous: no ids
}


@pytest.mark.parametrize("name", list(QUANTIZERS))
def test_every_quantizer_plugs_in(name):
  quantizer, index_dims = QUANTIZERS[name]
  # attention=False keeps this test's ~9 compilations short; the presets test covers attention.
  model = VQGAN.from_preset("tiny", quantizer=quantizer, config={"attention": False})

  discrete = index_dims is not None

  @jax.jit
  def run(images):
    variables = model.init(KEY, images)
    out, state = model.apply(variables, images, train=True, mutable=["quantizer_state"],
                             rngs={"quantizer": jax.random.key(4)})
    ids, latents = model.apply(variables, images, method="encode", return_latents=True)
    eval_reconstruction = model.apply(variables, images).reconstruction
    decoded = model.apply(variables, ids, method="decode") if discrete else None
    return variables, out, state, ids, latents, eval_reconstruction, decoded

  variables, out, state, ids, latents, eval_reconstruction, decoded = run(IMAGES)
  chex.assert_shape([out.reconstruction, out.quantizer_output.quantized,
                     out.quantizer_output.loss, latents],
                    [IMAGES.shape, (2, 8, 8, quantizer.code_dim), (),
                     (2, 8, 8, quantizer.code_dim)])
  chex.assert_tree_all_finite((out, state), custom_message=name)
  if not discrete:  # continuous latents (KL): decode_latents only
    with pytest.raises(TypeError, match="decode_latents"):
      model.apply(variables, ids, method="decode")
    return
  chex.assert_shape(ids, (2, 8, 8, *index_dims))
  chex.assert_type(ids, jnp.int32)
  # decode(encode(x)) is the eval-mode forward pass.
  np.testing.assert_allclose(decoded, eval_reconstruction, atol=1e-4)
