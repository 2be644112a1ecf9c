"""jaxtok's Linen modules wrap into Flax NNX with `nnx.bridge.ToNNX`."""

import jax
import numpy as np
from flax import nnx

from jaxtok.quantizers import VectorQuantizer


def test_vector_quantizer_under_to_nnx():
  z = jax.random.normal(jax.random.key(0), (2, 5, 4))
  linen = VectorQuantizer(codebook_size=16, dim=4)
  model = nnx.bridge.ToNNX(linen, rngs=nnx.Rngs(0))
  nnx.bridge.lazy_init(model, z)
  out = model(z)
  codebook = np.asarray(jax.tree.leaves(nnx.state(model, nnx.Param))[0])
  assert codebook.shape == (16, 4)
  # The wrapped module looks up the same nearest codes a NumPy brute force finds.
  d = ((np.asarray(z)[..., None, :] - codebook) ** 2).sum(-1)
  np.testing.assert_array_equal(np.asarray(out.indices), d.argmin(-1))
  np.testing.assert_allclose(np.asarray(out.quantized), codebook[d.argmin(-1)], rtol=1e-6)
