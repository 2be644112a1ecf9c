"""patchify / unpatchify: layout, exact round trip, errors naming the shape."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.layers.patchify import patchify, unpatchify


def _images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, shape), jnp.float32)


@pytest.mark.parametrize("shape, p", [((2, 8, 12, 3), 4), ((1, 6, 6, 1), 3), ((3, 4, 4, 2), 1),
                                      ((1, 4, 4, 3), 4)])
def test_round_trip_is_exact(shape, p):
  x = _images(shape)
  patches = patchify(x, p)
  b, height, width, c = shape
  chex.assert_shape(patches, (b, height // p, width // p, p * p * c))
  np.testing.assert_array_equal(unpatchify(patches, p), x)


def test_patch_layout_is_row_major_p_p_c():
  x = _images((2, 8, 12, 3), seed=1)
  patches = patchify(x, 4)
  # Patch (i, j) holds the pixels of rows 4i..4i+3 and columns 4j..4j+3, flattened (p, p, C).
  np.testing.assert_array_equal(patches[1, 1, 2], x[1, 4:8, 8:12].reshape(-1))
  np.testing.assert_array_equal(patches.reshape(2, 6, 48)[0, 1], x[0, :4, 4:8].reshape(-1))


def test_works_under_jit():
  x = _images((2, 8, 8, 3))
  round_trip = jax.jit(lambda x: unpatchify(patchify(x, 2), 2))
  np.testing.assert_array_equal(round_trip(x), x)


@pytest.mark.parametrize("shape, message", [
    ((2, 10, 8, 3), r"H=10 and W=8 must both be divisible by the patch size 4"),
    ((2, 8, 6, 3), r"H=8 and W=6 .*got shape \(2, 8, 6, 3\)"),
    ((8, 8, 3), "NHWC"),
])
def test_patchify_errors_name_the_shape(shape, message):
  with pytest.raises(ValueError, match=message):
    patchify(jnp.zeros(shape), 4)


def test_unpatchify_errors_name_the_shape():
  with pytest.raises(ValueError, match=r"last axis \(47\) must be p\*p\*C for patch size 4"):
    unpatchify(jnp.zeros((1, 2, 2, 47)), 4)
  with pytest.raises(ValueError, match=r"\[B, h, w, p\*p\*C\]"):
    unpatchify(jnp.zeros((1, 4, 48)), 4)
