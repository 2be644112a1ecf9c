"""uint8 <-> [-1, 1] conversions are exact round trips (no colour drift from the pipeline), and
image grids place every picture."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.data import images


def test_every_uint8_value_round_trips_exactly_eager_and_jitted():
  values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
  as_float = images.to_float(values)
  assert as_float.dtype == np.float32 and as_float.min() == -1.0 and as_float.max() == 1.0
  np.testing.assert_array_equal(images.to_uint8(as_float), values)
  jitted = jax.jit(lambda x: images.to_uint8(images.to_float(x)))(jnp.asarray(values))
  np.testing.assert_array_equal(jitted, values)
  np.testing.assert_array_equal(images.to_uint8(jnp.array([-3.0, 0.0, 5.0])), [0, 128, 255])


def test_grids_place_each_image_with_white_gaps():
  batch = np.stack([np.full((4, 5, 3), i, np.uint8) for i in range(5)])
  square = images.grid(batch, gap=1)  # 3 columns, 2 rows
  assert square.shape == (2 * 4 + 1, 3 * 5 + 2, 3)
  assert square[0, 0, 0] == 0 and square[5, 6, 0] == 4 and square[4, 0, 0] == 255
  pair = images.comparison_grid(batch[:2], batch[3:])
  assert pair.shape == (2 * 4 + 2, 2 * 5 + 2, 3)
  assert pair[0, 0, 0] == 0 and pair[6, 7, 0] == 4
