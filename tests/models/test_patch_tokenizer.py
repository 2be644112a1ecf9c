"""PatchTokenizer: the Tokenizer API on a per-patch MLP; shapes, round trips, input errors."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.tokenizers import PatchTokenizer, TokenizerOutput
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.residual import ResidualVQ
from jaxtok.quantizers.vq import VectorQuantizer

QUANTIZERS = {
    "vq": lambda: VectorQuantizer(codebook_size=16, dim=4),
    "fsq": lambda: FSQ(levels=(5, 5, 5)),
    "rvq": lambda: ResidualVQ(VectorQuantizer(codebook_size=8, dim=4), num_quantizers=2),
}
EXTRA = {"vq": (), "fsq": (), "rvq": (2,)}  # per-token index axes each quantizer adds


def images(seed=0, shape=(2, 16, 12, 3)):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


@functools.cache
def build(name: str):
  model = PatchTokenizer.from_preset("tiny", quantizer=QUANTIZERS[name]())
  variables = jax.jit(model.init)(jax.random.key(0), images())
  return model, variables


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_shapes_and_round_trip_equal_the_eval_reconstruction(name):
  model, variables = build(name)
  x = images(1)
  grid = model.token_shape(x.shape)
  assert grid == (4, 3) and model.downsample_factor == 4
  out = jax.jit(model.apply)(variables, x)
  assert isinstance(out, TokenizerOutput)
  chex.assert_shape(out.reconstruction, x.shape)
  chex.assert_type(out.reconstruction, jnp.float32)
  chex.assert_tree_all_finite(out.reconstruction)
  code_dim = model.quantizer.code_dim
  chex.assert_shape(out.quantizer_output.quantized, (2, *grid, code_dim))

  encode = jax.jit(lambda v, x: model.apply(v, x, method="encode", return_latents=True))
  ids, latents = encode(variables, x)
  chex.assert_shape(ids, (2, *grid, *EXTRA[name]))
  chex.assert_type(ids, jnp.int32)
  np.testing.assert_array_equal(ids, out.quantizer_output.indices)
  np.testing.assert_array_equal(jax.jit(lambda v, x: model.apply(v, x, method="encode"))(
      variables, x), ids)
  decoded = jax.jit(lambda v, i: model.apply(v, i, method="decode"))(variables, ids)
  np.testing.assert_allclose(decoded, out.reconstruction, rtol=1e-5, atol=1e-5)
  from_latents = jax.jit(lambda v, z: model.apply(v, z, method="decode_latents"))(
      variables, latents)
  np.testing.assert_allclose(from_latents, out.reconstruction, rtol=1e-5, atol=1e-5)


def test_train_mode_gives_finite_gradients_to_every_parameter():
  model, variables = build("fsq")
  x = images(2)

  def loss(params):
    out = model.apply({**variables, "params": params}, x, train=True)
    return jnp.mean((out.reconstruction - x) ** 2) + out.quantizer_output.loss

  grads = jax.jit(jax.grad(loss))(variables["params"])
  chex.assert_tree_all_finite(grads)
  assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_uint8_images_and_any_grid_divisible_by_the_patch():
  model, variables = build("vq")
  x = np.random.default_rng(0).integers(0, 256, (1, 8, 20, 3), dtype=np.uint8)
  ids = model.apply(variables, x, method="encode")
  chex.assert_shape(ids, (1, 2, 5))
  chex.assert_shape(model.apply(variables, ids, method="decode"), (1, 8, 20, 3))


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 18, 16, 3), np.float32), r"H=18 and W=16 must both be divisible by .* 4"),
    (np.zeros((2, 3, 16, 16), np.float32), "NCHW"),
    (np.zeros((16, 16, 3), np.float32), "4-D NHWC"),
    (np.full((2, 16, 16, 3), 2.0, np.float32), r"\[-1, 1\]"),
])
def test_bad_images_raise_clear_errors(bad, message):
  model, variables = build("vq")
  with pytest.raises(ValueError, match=message):
    model.apply(variables, bad, method="encode")
  with pytest.raises(ValueError, match=message):
    model.apply(variables, bad)


def test_bad_tokens_and_sizes_raise_clear_errors():
  model, variables = build("vq")
  with pytest.raises(ValueError, match="must lie in"):
    model.apply(variables, np.full((1, 2, 2), 16, np.int32), method="decode")
  with pytest.raises(ValueError, match=r"token grid \[B, h, w, \.\.\.\]"):
    model.apply(variables, np.zeros((1, 4), np.int32), method="decode")
  with pytest.raises(ValueError, match="index layout"):
    model.apply(variables, np.zeros((1, 2, 2, 2), np.int32), method="decode")
  with pytest.raises(ValueError, match=r"latents must be \[B, h, w, 4\]"):
    model.apply(variables, jnp.zeros((1, 2, 2, 3)), method="decode_latents")
  with pytest.raises(ValueError, match="divisible"):
    model.token_shape((30, 32))
