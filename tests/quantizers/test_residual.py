"""ResidualVQ and ResidualFSQ: round trips, prefix decoding, quantize dropout, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.residual import ResidualFSQ, ResidualVQ
from jaxtok.quantizers.simvq import SimVQ
from jaxtok.quantizers.vq import STATE, VectorQuantizer

MODELS = {
    "separate": lambda: ResidualVQ(VectorQuantizer(16, 4), 3),
    "shared": lambda: ResidualVQ(VectorQuantizer(16, 4), 3, shared_codebook=True),
    "ema_low_dim": lambda: ResidualVQ(VectorQuantizer(16, 4, codebook_dim=2, use_ema=True), 3),
    "simvq": lambda: ResidualVQ(SimVQ(16, 4), 3),
    "fsq": lambda: ResidualFSQ((5, 4, 3, 8), 3),
}


def _train(model, variables, z, key=0):
  return model.apply(variables, z, train=True, rngs={"quantizer": jax.random.key(key)},
                     mutable=[STATE])


@pytest.mark.parametrize("name", MODELS)
def test_indices_to_codes_of_encode_equals_quantized(name, maybe_jit):
  model = MODELS[name]()
  z = 0.5 * jax.random.normal(jax.random.key(1), (2, 5, 4))
  v = model.init(jax.random.key(0), z)
  if name == "shared":
    assert set(v["params"]) == {"shared"}
  elif name == "separate":
    assert set(v["params"]) == {"level_0", "level_1", "level_2"}
  out = maybe_jit(model.apply)(v, z)
  assert out.indices.shape == (2, 5, 3) and out.indices.dtype == jnp.int32
  assert 0 <= int(out.indices.min()) and int(out.indices.max()) < model.codebook_size
  ids = maybe_jit(functools.partial(model.apply, method="encode"))(v, z)
  np.testing.assert_array_equal(ids, out.indices)
  codes = maybe_jit(functools.partial(model.apply, method="indices_to_codes"))(v, ids)
  assert codes.dtype == jnp.float32 and codes.shape == z.shape
  if name == "ema_low_dim":  # the same Dense on differently shaped inputs: matmul rounding
    np.testing.assert_allclose(codes, out.quantized, rtol=1e-6, atol=1e-6)
  else:
    np.testing.assert_array_equal(codes, out.quantized)


def _prefix_errors(model, v, z, n_levels):
  ids = model.apply(v, z, method="encode")
  return [float(jnp.mean(jnp.square(z)))] + [
      float(jnp.mean(jnp.square(model.apply(v, ids[..., :l], method="indices_to_codes") - z)))
      for l in range(1, n_levels + 1)]


def test_more_levels_reconstruct_better():
  z = jax.random.normal(jax.random.key(1), (256, 4))
  rvq = ResidualVQ(VectorQuantizer(32, 4, use_ema=True, data_init="kmeans++"), 4)
  v = rvq.init(jax.random.key(0), z)
  v = {**v, **_train(rvq, v, z)[1]}  # k-means++ init of every level on its own residual
  errors = _prefix_errors(rvq, v, z, 4)
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 0.2 * errors[0], errors

  z = jax.random.uniform(jax.random.key(2), (256, 3), minval=-0.5, maxval=0.5)
  rfsq = ResidualFSQ((7, 5, 8), 4)
  errors = _prefix_errors(rfsq, {}, z, 4)
  assert all(a > b for a, b in zip(errors, errors[1:])), errors
  assert errors[-1] < 1e-2 * errors[0], errors


def test_residual_fsq_scales_level_i_by_levels_minus_one_to_the_minus_i():
  levels = (5, 8)
  model = ResidualFSQ(levels, 3)
  fsq_codes = FSQ(levels).indices_to_codes(jnp.arange(40))
  level0 = model.apply({}, jnp.arange(40)[:, None], method="indices_to_codes")
  np.testing.assert_array_equal(level0, fsq_codes)  # level 0 is plain FSQ
  for i in (1, 2):
    ids = jnp.zeros((40, i + 1), jnp.int32).at[:, i].set(jnp.arange(40))
    got = model.apply({}, ids, method="indices_to_codes")
    zero = model.apply({}, jnp.zeros((40, i + 1), jnp.int32), method="indices_to_codes")
    np.testing.assert_allclose(got - zero,
                               (fsq_codes - fsq_codes[:1]) * (np.array([levels]) - 1.0) ** -i,
                               rtol=1e-6, atol=1e-7)


def test_quantize_dropout_uses_a_random_prefix_of_levels():
  model = ResidualVQ(VectorQuantizer(16, 4, use_ema=True), 4, quantize_dropout=True,
                     dropout_min_levels=2)
  z = jax.random.normal(jax.random.key(1), (32, 4))
  v = model.init(jax.random.key(0), z)
  step = jax.jit(lambda v, z, key: model.apply(v, z, train=True, mutable=[STATE],
                                                rngs={"quantizer": key}))
  full = model.apply(v, z, method="encode")
  seen = set()
  for seed in range(12):
    out, state = step(v, z, jax.random.key(seed))
    n = int(out.metrics["active_levels"])
    seen.add(n)
    assert 2 <= n <= 4
    # Every level's ids are returned, as encode gives them; the first n make up `quantized`.
    np.testing.assert_array_equal(out.indices, full)
    np.testing.assert_array_equal(
        model.apply(v, out.indices[..., :n], method="indices_to_codes"), out.quantized)
    for i in range(4):  # only active levels update their EMA statistics
      changed = not np.array_equal(state[STATE][f"level_{i}"]["counts"],
                                   v[STATE][f"level_{i}"]["counts"])
      assert changed == (i < n), (seed, n, i)
  assert seen == {2, 3, 4}
  # Evaluation always uses every level.
  assert int(model.apply(v, z).metrics["active_levels"]) == 4


@pytest.mark.parametrize("dropout", [False, True])
def test_stack_is_straight_through(dropout, maybe_jit):
  model = ResidualVQ(VectorQuantizer(16, 4), 3, quantize_dropout=dropout)
  z = jax.random.normal(jax.random.key(1), (6, 4))
  w = jax.random.normal(jax.random.key(2), (6, 4))
  v = model.init(jax.random.key(0), z)
  f = lambda z: jnp.sum(model.apply(v, z, train=True, rngs={"quantizer": jax.random.key(3)})
                        .quantized * w)
  np.testing.assert_allclose(maybe_jit(jax.grad(f))(z), w, rtol=1e-6, atol=1e-6)


def test_dropout_and_ema_under_a_named_axis_stay_in_sync():
  model = ResidualVQ(VectorQuantizer(8, 3, use_ema=True, ema_axis_name="data"), 3,
                     quantize_dropout=True)
  z = jax.random.normal(jax.random.key(1), (4, 16, 3))
  v = model.init(jax.random.key(0), z[0])
  _, state = jax.vmap(lambda z: _train(model, v, z, key=1), axis_name="data")(z)
  for leaf in jax.tree.leaves(state):
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))


def test_jit_vmap_and_bf16():
  model = ResidualVQ(VectorQuantizer(8, 4), 3)
  signs = np.concatenate([np.eye(4), -np.eye(4)])
  # Codebooks at scales 8, 1, 1/8, and z sums of one code per level: exact in bf16.
  books = {f"level_{i}": {"codebook": jnp.asarray(s * signs, jnp.float32)}
           for i, s in enumerate((8.0, 1.0, 0.125))}
  ids = np.stack([np.arange(24) % 8, (np.arange(24) // 3) % 8, (np.arange(24) * 5) % 8], -1)
  z = jnp.asarray(sum(s * signs[ids[:, i]] for i, s in enumerate((8.0, 1.0, 0.125))),
                  jnp.float32).reshape(2, 12, 4)
  v = {"params": books}
  ref = model.apply(v, z)
  np.testing.assert_array_equal(ref.indices, ids.reshape(2, 12, 3))
  np.testing.assert_array_equal(ref.quantized, z)
  jitted = jax.jit(model.apply)(v, z)
  np.testing.assert_array_equal(jitted.indices, ref.indices)
  np.testing.assert_array_equal(jax.vmap(lambda z: model.apply(v, z))(z).indices, ref.indices)
  low = model.apply(v, z.astype(jnp.bfloat16))
  assert low.quantized.dtype == jnp.bfloat16
  assert np.isfinite(np.asarray(low.quantized, np.float32)).all()
  np.testing.assert_array_equal(low.indices, ref.indices)
  fsq = ResidualFSQ((5, 5, 5, 5), 2)
  zf = 0.3 * jax.random.normal(jax.random.key(1), (2, 12, 4))
  low, high = fsq.apply({}, zf.astype(jnp.bfloat16)), jax.jit(fsq.apply)({}, zf)
  assert low.quantized.dtype == jnp.bfloat16 and high.quantized.dtype == jnp.float32
  np.testing.assert_array_equal(jax.vmap(lambda z: fsq.apply({}, z))(zf).indices, high.indices)


def test_errors_speak_to_the_user():
  model = ResidualVQ(VectorQuantizer(8, 4), 3)
  v = model.init(jax.random.key(0), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"D=4.*\(2, 5\)"):
    model.apply(v, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match=r"num_quantizers=3.*\(2, 4\)"):
    model.apply(v, jnp.zeros((2, 4), jnp.int32), method="indices_to_codes")
  with pytest.raises(ValueError, match=r"num_quantizers=3"):
    model.apply(v, jnp.zeros((), jnp.int32), method="indices_to_codes")
  with pytest.raises(TypeError, match="integer"):
    model.apply(v, jnp.zeros((2, 3)), method="indices_to_codes")
  with pytest.raises(ValueError, match=r"\[0, 8\)"):
    model.apply(v, jnp.array([[0, 8]]), method="indices_to_codes")
  with pytest.raises(ValueError, match=r"\[0, 60\)"):
    ResidualFSQ((5, 4, 3), 2).apply({}, jnp.array([[0, 60]]), method="indices_to_codes")
  with pytest.raises(ValueError, match="dropout_min_levels"):
    ResidualVQ(VectorQuantizer(8, 4), 3, dropout_min_levels=4)
  with pytest.raises(ValueError, match="num_quantizers"):
    ResidualFSQ((5, 5), 0)
