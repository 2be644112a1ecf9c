"""SimVQ: codebook = frozen basis · learned map; lookup, gradients, round trips, errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers.simvq import SimVQ
from jaxtok.quantizers.vq import STATE, VectorQuantizer


def _np_codebook(v, metric):
  codes = (np.asarray(v[STATE]["frozen_codebook"], np.float64)
           @ np.asarray(v["params"]["code_transform"]["kernel"], np.float64))
  return codes / np.linalg.norm(codes, axis=-1, keepdims=True) if metric == "cosine" else codes


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_lookup_matches_numpy_and_round_trips(metric, maybe_jit):
  model = SimVQ(32, 5, metric=metric)
  z = jax.random.normal(jax.random.key(1), (3, 7, 5))
  v = model.init(jax.random.key(0), z)
  assert set(v["params"]) == {"code_transform"} and set(v[STATE]) == {"frozen_codebook"}
  out = maybe_jit(model.apply)(v, z)
  codes = _np_codebook(v, metric)
  zc = np.asarray(z, np.float64).reshape(-1, 5)
  if metric == "cosine":
    zc = zc / np.linalg.norm(zc, axis=-1, keepdims=True)
  idx = ((zc[:, None] - codes[None]) ** 2).sum(-1).argmin(-1)
  np.testing.assert_array_equal(out.indices, idx.reshape(3, 7))
  np.testing.assert_allclose(out.quantized, codes[idx].reshape(3, 7, 5), rtol=1e-5, atol=1e-6)
  ids = maybe_jit(functools.partial(model.apply, method="encode"))(v, z)
  np.testing.assert_array_equal(ids, out.indices)
  codes = maybe_jit(functools.partial(model.apply, method="indices_to_codes"))(v, ids)
  np.testing.assert_array_equal(codes, out.quantized)
  np.testing.assert_allclose(
      out.loss, 1.25 * out.metrics["commitment_loss"], rtol=1e-6)  # both terms equal forward


def test_every_code_learns_through_the_shared_map_and_the_basis_stays_frozen():
  k, d = 64, 4
  z = jax.random.normal(jax.random.key(1), (6, d))  # hits at most 6 of the 64 codes
  for model, all_move in ((SimVQ(k, d), True), (VectorQuantizer(k, d), False)):
    v = model.init(jax.random.key(0), z)
    codebook = lambda p: model.apply({**v, "params": p}, method="get_codebook")
    loss = lambda p: model.apply({**v, "params": p}, z, train=True).loss
    g = jax.grad(loss)(v["params"])
    new_params = jax.tree.map(lambda p, g: p - 0.1 * g, v["params"], g)
    moved = np.abs(np.asarray(codebook(new_params) - codebook(v["params"]))).max(-1) > 0
    assert moved.all() == all_move and moved.sum() >= 1
  # The basis is state, not a param (no optimizer or weight decay touches it), and training
  # never changes it.
  model = SimVQ(k, d)
  v = model.init(jax.random.key(0), z)
  _, state = model.apply(v, z, train=True, mutable=[STATE])
  np.testing.assert_array_equal(state[STATE]["frozen_codebook"], v[STATE]["frozen_codebook"])


def test_straight_through_and_rotation_gradients():
  z = jax.random.normal(jax.random.key(1), (4, 5))
  w = jax.random.normal(jax.random.key(2), (4, 5))
  model = SimVQ(16, 5)
  v = model.init(jax.random.key(0), z)
  g = jax.grad(lambda z: jnp.sum(model.apply(v, z).quantized * w))(z)
  np.testing.assert_array_equal(g, w)
  rot = SimVQ(16, 5, estimator="rotation")
  out = rot.apply(v, z)
  g = np.asarray(jax.grad(lambda z: jnp.sum(rot.apply(v, z).quantized * w))(z))
  # The rotation trick's gradient has the norm of λ·w (R is orthogonal), λ = ||q|| / ||z||.
  lam = np.linalg.norm(out.quantized, axis=-1) / np.linalg.norm(z, axis=-1)
  np.testing.assert_allclose(np.linalg.norm(g, axis=-1), lam * np.linalg.norm(w, axis=-1),
                             rtol=1e-5)


def test_jit_vmap_bf16_and_errors():
  model = SimVQ(8, 4)
  z = jax.random.normal(jax.random.key(1), (2, 6, 4))
  v = model.init(jax.random.key(0), z)
  ref = model.apply(v, z)
  np.testing.assert_array_equal(jax.jit(model.apply)(v, z).indices, ref.indices)
  np.testing.assert_array_equal(jax.vmap(lambda z: model.apply(v, z))(z).quantized,
                                ref.quantized)
  # bf16 input on data far from ties: bf16 output, same ids.
  codes = np.asarray(model.apply(v, method="get_codebook"))
  zz = jnp.asarray(codes[np.arange(12) % 8].reshape(2, 6, 4), jnp.bfloat16)
  low, high = model.apply(v, zz), model.apply(v, zz.astype(jnp.float32))
  assert low.quantized.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(low.quantized, np.float32)).all()
  np.testing.assert_array_equal(low.indices, high.indices)
  with pytest.raises(ValueError, match=r"D=4.*\(2, 3\)"):
    model.apply(v, jnp.zeros((2, 3)))
  with pytest.raises(TypeError, match="integer"):
    model.apply(v, jnp.zeros((2,)), method="indices_to_codes")
  with pytest.raises(ValueError, match=r"\[0, 8\)"):
    model.apply(v, jnp.array([3, 9]), method="indices_to_codes")
  with pytest.raises(ValueError, match="metric"):
    SimVQ(8, 4, metric="l1")
