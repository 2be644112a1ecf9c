"""VectorQuantizer: lookup against NumPy, estimators' gradients, EMA, data init, restarts."""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxtok.quantizers import vq
from jaxtok.quantizers.vq import STATE, VectorQuantizer


def _train(model, variables, z, key=0):
  return model.apply(variables, z, train=True, rngs={"quantizer": jax.random.key(key)},
                     mutable=[STATE])


def _np_nearest(zc, codes):
  d2 = ((zc[:, None, :].astype(np.float64) - codes[None].astype(np.float64)) ** 2).sum(-1)
  return d2.argmin(-1)


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _set(variables, collection, name, value):
  variables = flax.core.unfreeze(variables)
  variables[collection][name] = jnp.asarray(value, jnp.float32)
  return variables


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("codebook_dim", [None, 3])
def test_lookup_matches_numpy_brute_force(metric, codebook_dim, maybe_jit):
  model = VectorQuantizer(32, 6, codebook_dim=codebook_dim, metric=metric)
  z = jax.random.normal(jax.random.key(1), (4, 5, 6))
  v = model.init(jax.random.key(0), z)
  out = maybe_jit(model.apply)(v, z)
  p = jax.tree.map(np.asarray, v["params"])
  zc = np.asarray(z, np.float64).reshape(-1, 6)
  if codebook_dim:
    zc = zc @ p["proj_in"]["kernel"] + p["proj_in"]["bias"]
  codes = p["codebook"].astype(np.float64)
  if metric == "cosine":
    zc, codes = _np_normalize(zc), _np_normalize(codes)
  idx = _np_nearest(zc, codes)
  np.testing.assert_array_equal(out.indices, idx.reshape(4, 5))
  q = codes[idx]
  if codebook_dim:
    q = q @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
  np.testing.assert_allclose(out.quantized, q.reshape(4, 5, 6), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(model.apply(v, method="get_codebook"), codes, rtol=1e-6, atol=1e-6)
  assert out.indices.dtype == jnp.int32 and out.quantized.shape == z.shape
  for key in ("usage", "perplexity", "codebook_loss", "commitment_loss"):
    assert out.metrics[key].dtype == jnp.float32


@pytest.mark.parametrize("kwargs", [
    {}, {"metric": "cosine", "estimator": "rotation"}, {"codebook_dim": 3, "use_ema": True},
    {"data_init": "sample", "restart_threshold": 0.5}])
def test_indices_to_codes_of_encode_equals_quantized(kwargs, maybe_jit):
  model = VectorQuantizer(16, 6, **kwargs)
  z = jax.random.normal(jax.random.key(1), (3, 7, 6))
  v = model.init(jax.random.key(0), z)
  if model.data_init != "none":
    v = {**v, **maybe_jit(functools.partial(_train, model))(v, z)[1]}
  out = maybe_jit(model.apply)(v, z)
  idx = maybe_jit(functools.partial(model.apply, method="encode"))(v, z)
  np.testing.assert_array_equal(idx, out.indices)
  codes = maybe_jit(functools.partial(model.apply, method="indices_to_codes"))(v, idx)
  assert codes.dtype == jnp.float32
  if model.codebook_dim is None:
    np.testing.assert_array_equal(codes, out.quantized)
  else:  # the same Dense on differently shaped inputs: equal up to matmul rounding
    np.testing.assert_allclose(codes, out.quantized, rtol=1e-6, atol=1e-6)


def test_straight_through_gradient_is_identity_and_skips_the_codebook(maybe_jit):
  model = VectorQuantizer(16, 5)
  z = jax.random.normal(jax.random.key(1), (4, 5))
  w = jax.random.normal(jax.random.key(2), (4, 5))
  v = model.init(jax.random.key(0), z)
  f = lambda params, z: jnp.sum(model.apply({"params": params}, z).quantized * w)
  g_params, g_z = maybe_jit(jax.grad(f, argnums=(0, 1)))(v["params"], z)
  np.testing.assert_array_equal(g_z, w)
  np.testing.assert_array_equal(g_params["codebook"], 0.0)  # only the codebook loss trains it


def _np_rotation_grad(e, q, w):
  """λ Rᵀ w per row, with R = I − 2rrᵀ + 2q̂êᵀ built as a matrix (float64)."""
  out = []
  for e_, q_, w_ in zip(e.astype(np.float64), q.astype(np.float64), w.astype(np.float64)):
    eh, qh = e_ / np.linalg.norm(e_), q_ / np.linalg.norm(q_)
    r = (eh + qh) / np.linalg.norm(eh + qh)
    rot = np.eye(len(e_)) - 2 * np.outer(r, r) + 2 * np.outer(qh, eh)
    np.testing.assert_allclose(rot @ eh, qh, atol=1e-12)  # R rotates ê onto q̂
    np.testing.assert_allclose(rot.T @ rot, np.eye(len(e_)), atol=1e-12)  # and is orthogonal
    out.append(np.linalg.norm(q_) / np.linalg.norm(e_) * rot.T @ w_)
  return np.stack(out)


def test_rotation_trick_forward_and_gradient_match_numpy():
  e, q, w = (np.asarray(jax.random.normal(jax.random.key(i), (6, 4))) for i in range(3))
  out = vq.rotation_trick(jnp.asarray(e), jnp.asarray(q))
  np.testing.assert_array_equal(out, q)
  g_e, g_q = jax.grad(lambda e, q: jnp.sum(vq.rotation_trick(e, q) * w), argnums=(0, 1))(
      jnp.asarray(e), jnp.asarray(q))
  np.testing.assert_allclose(g_e, _np_rotation_grad(e, q, w), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(g_q, 0.0)
  # Through the module: the same gradient with q the looked-up code.
  model = VectorQuantizer(16, 4, estimator="rotation")
  v = model.init(jax.random.key(0), e)
  q_mod = np.asarray(model.apply(v, jnp.asarray(e)).quantized)
  g = jax.grad(lambda z: jnp.sum(model.apply(v, z).quantized * w))(jnp.asarray(e))
  np.testing.assert_allclose(g, _np_rotation_grad(e, q_mod, w), rtol=1e-5, atol=1e-5)


def _np_ema(counts, sums, b_counts, b_sums, decay, eps):
  counts = decay * counts + (1 - decay) * b_counts
  sums = decay * sums + (1 - decay) * b_sums
  n = counts.sum()
  smoothed = (counts + eps) / (n + len(counts) * eps) * n
  return counts, sums, sums / smoothed[:, None]


def _np_stats(idx, zc, k):
  idx = np.asarray(idx).reshape(-1)
  zc = np.asarray(zc, np.float64).reshape(len(idx), -1)
  sums = np.zeros((k, zc.shape[1]))
  np.add.at(sums, idx, zc)
  return np.bincount(idx, minlength=k).astype(np.float64), sums


def test_ema_update_formula_matches_numpy():
  rng = np.random.default_rng(0)
  counts, b_counts = rng.uniform(0, 3, 8), rng.integers(0, 4, 8).astype(np.float64)
  b_counts[2] = counts[2] = 0.0  # an unused code stays finite thanks to Laplace smoothing
  sums, b_sums = rng.normal(size=(8, 3)), rng.normal(size=(8, 3))
  got = vq.ema_update(*(jnp.asarray(a, jnp.float32) for a in (counts, sums, b_counts, b_sums)),
                      decay=0.9, eps=1e-3)
  for g, r in zip(got, _np_ema(counts, sums, b_counts, b_sums, 0.9, 1e-3)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6)
  assert np.isfinite(np.asarray(got[2])).all()


def test_ema_training_step_matches_numpy(maybe_jit):
  model = VectorQuantizer(8, 3, use_ema=True, ema_decay=0.9, ema_eps=1e-3)
  z = jax.random.normal(jax.random.key(1), (20, 3))
  v = model.init(jax.random.key(0), z)
  assert "params" not in v  # the EMA codebook is state
  codebook0 = np.asarray(v[STATE]["codebook"], np.float64)
  out, state = maybe_jit(functools.partial(_train, model))(v, z)
  b_counts, b_sums = _np_stats(out.indices, z, 8)
  counts, sums, codebook = _np_ema(np.ones(8), codebook0, b_counts, b_sums, 0.9, 1e-3)
  s = state[STATE]
  np.testing.assert_allclose(s["counts"], counts, rtol=1e-5)
  np.testing.assert_allclose(s["sums"], sums, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s["codebook"], codebook, rtol=1e-5, atol=1e-6)
  # No codebook term in the loss: the EMA moves the codebook.
  np.testing.assert_allclose(out.loss, 0.25 * out.metrics["commitment_loss"], rtol=1e-6)
  # Evaluation and init never touch the state.
  assert model.apply(v, z, mutable=[STATE])[1] == {STATE: v[STATE]}


def test_ema_statistics_are_averaged_over_the_named_axis():
  model = VectorQuantizer(8, 3, use_ema=True, ema_decay=0.8, ema_axis_name="data")
  z = jax.random.normal(jax.random.key(1), (4, 10, 3))  # 4 shards of 10 vectors
  v = model.init(jax.random.key(0), z[0])
  step = jax.vmap(lambda z: model.apply(v, z, train=True, mutable=[STATE]), axis_name="data")
  out, state = step(z)
  per_shard = [_np_stats(out.indices[p], z[p], 8) for p in range(4)]
  b_counts = np.mean([c for c, _ in per_shard], axis=0)
  b_sums = np.mean([s for _, s in per_shard], axis=0)
  ref = _np_ema(np.ones(8), np.asarray(v[STATE]["codebook"], np.float64), b_counts, b_sums,
                0.8, model.ema_eps)
  for name, r in zip(("counts", "sums", "codebook"), ref):
    for p in range(4):  # every shard ends with the same, averaged, state
      np.testing.assert_allclose(state[STATE][name][p], r, rtol=1e-5, atol=1e-6)

  # The same under shard_map over the 8 fake CPU devices (one shard of 5 vectors each).
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  z8 = z.reshape(8, 5, 3)
  local = lambda z: jax.tree.map(lambda x: x[None],
                                 model.apply(v, z[0], train=True, mutable=[STATE])[1])
  state8 = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=P("data")))(z8)
  idx8 = out.indices.reshape(8, 5)
  stats = [_np_stats(idx8[p], z8[p], 8) for p in range(8)]
  ref = _np_ema(np.ones(8), np.asarray(v[STATE]["codebook"], np.float64),
                np.mean([c for c, _ in stats], 0), np.mean([s for _, s in stats], 0),
                0.8, model.ema_eps)
  for name, r in zip(("counts", "sums", "codebook"), ref):
    for p in range(8):
      np.testing.assert_allclose(state8[STATE][name][p], r, rtol=1e-5, atol=1e-6)


def _clusters(key, sizes, dim=3, spread=0.01, sep=10.0):
  """Tight clusters around sep·e_i (i < dim) and the origin, with the given sizes."""
  centres = np.concatenate([sep * np.eye(dim), np.zeros((1, dim))])[:len(sizes)]
  labels = np.repeat(np.arange(len(sizes)), sizes)
  noise = spread * np.asarray(jax.random.normal(jax.random.key(key), (len(labels), dim)))
  return jnp.asarray(centres[labels] + noise, jnp.float32), labels, centres


def test_kmeans_plusplus_spreads_codes_where_sampling_does_not():
  z, _, centres = _clusters(0, (97, 1, 1, 1))
  init = {m: jax.jit(functools.partial(vq.data_init_codes, k=4, method=m))
          for m in ("kmeans++", "sample")}
  for seed in range(5):
    key = jax.random.key(seed)
    for method, spread_out in (("kmeans++", True), ("sample", False)):
      codes = np.asarray(init[method](z, key=key))
      # Every code is one of the batch's rows.
      assert (np.abs(codes[:, None] - np.asarray(z)[None]).sum(-1).min(1) == 0).all()
      hit = {int(np.linalg.norm(centres - c, axis=-1).argmin()) for c in codes}
      assert (len(hit) == 4) == spread_out, (method, seed, hit)


@pytest.mark.parametrize("use_ema", [False, True])
@pytest.mark.parametrize("method", ["sample", "kmeans++"])
def test_data_init_on_first_train_step_only(use_ema, method):
  model = VectorQuantizer(4, 3, use_ema=use_ema, data_init=method)
  z, labels, _ = _clusters(1, (30, 30, 30, 30))
  v = model.init(jax.random.key(0), z)
  assert not v[STATE]["initialized"]
  out, state = _train(model, v, z)
  v1 = {**v, **state}
  assert bool(v1[STATE]["initialized"])
  # The first step already looks up codes that are rows of its batch (exactly for the EMA
  # codebook; param + (code − param) may round by an ulp).
  tol = 0 if use_ema else 1e-5
  zs = np.asarray(z)
  is_row = lambda c: (np.abs(c[:, None] - zs[None]).max(-1).min(1) <= tol).all()
  assert is_row(np.asarray(out.quantized))
  if method == "kmeans++":  # one code per cluster
    assert len(set(zip(labels, np.asarray(out.indices)))) == len(set(np.asarray(out.indices))) == 4
  codes = np.asarray(model.apply(v1, method="get_codebook"))
  if not use_ema:  # params are untouched; the offset carries the rewrite, gradients the param
    assert is_row(codes)
    np.testing.assert_array_equal(v1["params"]["codebook"], v["params"]["codebook"])
    np.testing.assert_allclose(v1["params"]["codebook"] + v1[STATE]["codebook_offset"], codes)
    g = jax.grad(lambda p: model.apply({**v1, "params": p}, z).metrics["codebook_loss"])(
        v1["params"])
    assert np.abs(np.asarray(g["codebook"])).max() > 0
  # A second train step does not re-initialize from the new batch.
  _, state2 = _train(model, v1, z + 1.0, key=5)
  codes2 = np.asarray(model.apply({**v1, **state2}, method="get_codebook"))
  if not use_ema:
    np.testing.assert_array_equal(codes2, codes)
  assert np.abs(codes2[:, None] - zs[None] - 1.0).max(-1).min(1).max() > 0.5


@pytest.mark.parametrize("use_ema", [False, True])
def test_dead_code_restart_revives_a_collapsed_codebook(use_ema):
  k, d = 64, 4
  model = VectorQuantizer(k, d, use_ema=use_ema, restart_threshold=1.0)
  data = lambda key: jax.random.normal(jax.random.key(key), (512, d))
  v = model.init(jax.random.key(0), data(0))
  far = 100.0 + 0.1 * np.asarray(jax.random.normal(jax.random.key(1), (k, d)))
  v = _set(v, STATE if use_ema else "params", "codebook", far)
  if use_ema:
    v = _set(v, STATE, "sums", far)
  usage = lambda v: float(model.apply(v, data(999)).metrics["usage"])
  assert usage(v) < 0.1
  step = jax.jit(lambda v, z, key: model.apply(v, z, train=True, mutable=[STATE],
                                                rngs={"quantizer": key}))
  restarted = 0.0
  for i in range(30):
    out, state = step(v, data(i + 1), jax.random.key(i))
    v = {**v, **state}
    restarted += float(out.metrics["restarted"])
  assert usage(v) > 0.9
  assert restarted >= k - 2
  assert model.apply(v, data(0)).metrics["restarted"] == 0  # eval never restarts


def test_restarts_under_a_named_axis_keep_the_codebook_identical():
  model = VectorQuantizer(16, 3, use_ema=True, restart_threshold=1.0, ema_axis_name="data")
  z = jax.random.normal(jax.random.key(1), (4, 32, 3))
  v = model.init(jax.random.key(0), z[0])
  far = 50.0 + np.asarray(jax.random.normal(jax.random.key(2), (16, 3)))
  v = _set(_set(v, STATE, "codebook", far), STATE, "sums", far)
  step = jax.vmap(lambda z: _train(model, v, z), axis_name="data")
  out, state = step(z)
  codebook = np.asarray(state[STATE]["codebook"])
  assert out.metrics["restarted"][0] >= 14
  np.testing.assert_array_equal(codebook, np.broadcast_to(codebook[0], codebook.shape))
  rows = np.asarray(z).reshape(-1, 3)
  restarted = codebook[0][np.asarray(state[STATE]["counts"][0]) == 1.0]  # reset to threshold
  assert len(restarted) == out.metrics["restarted"][0]
  assert (np.abs(restarted[:, None] - rows[None]).max(-1).min(1) == 0).all()


def test_entropy_penalty_matches_numpy():
  z = np.asarray(jax.random.normal(jax.random.key(0), (12, 3)))
  e = np.asarray(jax.random.normal(jax.random.key(1), (5, 3)))
  d2 = ((z[:, None].astype(np.float64) - e[None]) ** 2).sum(-1)
  logits = -d2 / 0.5
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  h = lambda p: -(p * np.log(p)).sum(-1)
  ref = h(p).mean() - h(p.mean(0))
  got = vq.entropy_penalty(jnp.asarray(z), jnp.asarray(e), temperature=0.5)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
  model = VectorQuantizer(5, 3, entropy_weight=0.1, entropy_temperature=0.5)
  v = _set(model.init(jax.random.key(0), z), "params", "codebook", e)
  out = model.apply(v, jnp.asarray(z))
  np.testing.assert_allclose(out.metrics["entropy_loss"], ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out.loss, 1.25 * out.metrics["codebook_loss"] + 0.1 * ref,
                             rtol=1e-4, atol=1e-5)


def test_jit_vmap_and_bf16():
  model = VectorQuantizer(8, 4, metric="l2")
  codes = 10.0 * np.concatenate([np.eye(4), -np.eye(4)])
  z = jnp.asarray(codes[np.arange(24) % 8] + 0.3 * np.asarray(
      jax.random.normal(jax.random.key(1), (24, 4))), jnp.float32).reshape(2, 12, 4)
  v = _set(model.init(jax.random.key(0), z), "params", "codebook", codes)
  ref = model.apply(v, z)
  np.testing.assert_array_equal(ref.indices, np.arange(24).reshape(2, 12) % 8)
  jitted = jax.jit(lambda v, z: model.apply(v, z))(v, z)
  np.testing.assert_array_equal(jitted.indices, ref.indices)
  np.testing.assert_array_equal(jitted.quantized, ref.quantized)
  mapped = jax.vmap(lambda z: model.apply(v, z))(z)
  np.testing.assert_array_equal(mapped.indices, ref.indices)
  np.testing.assert_array_equal(mapped.quantized, ref.quantized)
  mapped_ids = jax.vmap(lambda z: model.apply(v, z, method="encode"))(z)
  np.testing.assert_array_equal(mapped_ids, ref.indices)
  low = model.apply(v, z.astype(jnp.bfloat16))
  assert low.quantized.dtype == jnp.bfloat16 and low.loss.dtype == jnp.float32
  assert np.isfinite(np.asarray(low.quantized, np.float32)).all()
  np.testing.assert_array_equal(low.indices, ref.indices)
  g = jax.grad(lambda z: jnp.sum(model.apply(v, z).quantized.astype(jnp.float32)))(
      z.astype(jnp.bfloat16))
  assert g.dtype == jnp.bfloat16 and np.isfinite(np.asarray(g, np.float32)).all()


def test_indices_are_exact_for_2_18_codes():
  k = 2**18
  ids = np.arange(k)
  grid = np.stack([ids // 4096, (ids // 64) % 64, ids % 64], -1).astype(np.float32)  # unique rows
  model = VectorQuantizer(k, 3)
  v = {"params": {"codebook": jnp.asarray(grid)}}
  probe = np.array([0, 1, 4097, k // 2 + 3, k - 3, k - 2, k - 1])
  got = model.apply(v, jnp.asarray(grid[probe]), method="encode")
  np.testing.assert_array_equal(got, probe)
  np.testing.assert_array_equal(model.apply(v, got, method="indices_to_codes"), grid[probe])


def test_errors_speak_to_the_user():
  model = VectorQuantizer(8, 4)
  v = model.init(jax.random.key(0), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r"D=4.*\(2, 5\)"):
    model.apply(v, jnp.zeros((2, 5)))
  with pytest.raises(ValueError, match=r"D=4.*\(3\,\)"):
    model.apply(v, jnp.zeros((3,)), method="encode")
  with pytest.raises(TypeError, match="integer"):
    model.apply(v, jnp.zeros((2,)), method="indices_to_codes")
  with pytest.raises(ValueError, match=r"\[0, 8\).*\[0, 8\]"):
    model.apply(v, jnp.array([0, 8]), method="indices_to_codes")
  with pytest.raises(ValueError, match=r"\[0, 8\)"):
    model.apply(v, jnp.array([-1, 3]), method="indices_to_codes")
  with pytest.raises(ValueError, match="metric"):
    VectorQuantizer(8, 4, metric="dot")
  with pytest.raises(ValueError, match="estimator"):
    VectorQuantizer(8, 4, estimator="gumbel")
  ema = VectorQuantizer(8, 4, use_ema=True)
  ve = ema.init(jax.random.key(0), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match="mutable"):
    ema.apply(ve, jnp.zeros((2, 4)), train=True)


def test_nearest_code_impl_is_a_field():
  z = jax.random.normal(jax.random.key(0), (3, 7, 4))
  variables = VectorQuantizer(codebook_size=40, dim=4).init(jax.random.key(1), z)
  got = {impl: VectorQuantizer(codebook_size=40, dim=4, nearest_code_impl=impl).apply(
      variables, z).indices for impl in ("xla", "reference")}
  np.testing.assert_array_equal(got["xla"], got["reference"])
  with pytest.raises(ValueError, match="impl must be one of"):
    VectorQuantizer(codebook_size=40, dim=4, nearest_code_impl="cuda").apply(variables, z)
