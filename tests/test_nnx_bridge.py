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


def test_tokenizer_under_to_nnx_without_a_mesh():
  # Tokenizer params carry logical axis names; without a mesh NNX must not shard eagerly.
  from jaxtok.models.tokenizers import VQGAN
  from jaxtok.quantizers import FSQ

  images = jax.random.uniform(jax.random.key(0), (1, 8, 8, 3), minval=-1.0, maxval=1.0)
  linen = VQGAN.from_preset("tiny", quantizer=FSQ(levels=(5, 5, 5)))
  with nnx.use_eager_sharding(False):
    model = nnx.bridge.ToNNX(linen, rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(model, images)
  out = model(images)
  variables = {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param))}
  want = linen.apply(variables, images)
  np.testing.assert_allclose(out.reconstruction, want.reconstruction, rtol=1e-6, atol=1e-6)
  assert out.reconstruction.shape == images.shape
