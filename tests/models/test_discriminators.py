"""PatchGAN and StyleGAN discriminators: shapes, layouts, state, dtypes, minibatch stddev."""

from functools import partial

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.discriminators import (
    PatchGANDiscriminator,
    StyleGANDiscriminator,
    blur_downsample,
    minibatch_stddev,
)


def _key(seed=0):
  # XLA:CPU compiles jitted threefry (the default key) very slowly: a jitted init of these
  # small models took 30-70 s with it and ~4 s with an "rbg" key.
  return jax.random.key(seed, impl="rbg")


def _images(batch, size, dtype=jnp.float32, seed=0):
  x = np.random.default_rng(seed).uniform(-1.0, 1.0, (batch, size, size, 3))
  return jnp.asarray(x, dtype)


@pytest.mark.parametrize("size, out", [(256, 30), (64, 6), (32, 2)])
def test_patchgan_map_shape(size, out):
  model = PatchGANDiscriminator(base_features=8)
  x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
  variables = jax.eval_shape(model.init, _key(0), x)
  logits = jax.eval_shape(model.apply, variables, x)
  chex.assert_shape(logits, (2, out, out, 1))
  chex.assert_type(logits, jnp.float32)


def test_patchgan_layout_matches_taming_state_dict():
  """Names and shapes are the taming / LlamaGen NLayerDiscriminator's (ndf=64, n_layers=3)
  after renaming main.{i} -> main_{i} and transposing OIHW -> HWIO."""
  variables = jax.eval_shape(PatchGANDiscriminator().init, _key(0),
                             jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  torch_shapes = {
      "main.0.weight": (64, 3, 4, 4), "main.0.bias": (64,),
      "main.2.weight": (128, 64, 4, 4), "main.3.weight": (128,), "main.3.bias": (128,),
      "main.5.weight": (256, 128, 4, 4), "main.6.weight": (256,), "main.6.bias": (256,),
      "main.8.weight": (512, 256, 4, 4), "main.9.weight": (512,), "main.9.bias": (512,),
      "main.11.weight": (1, 512, 4, 4), "main.11.bias": (1,),
  }
  flat = {"/".join(k.key for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
  expected = {}
  for name, shape in torch_shapes.items():
    _, index, kind = name.split(".")
    if len(shape) == 4:  # conv weight
      expected[f"main_{index}/kernel"] = (shape[2], shape[3], shape[1], shape[0])
    elif kind == "weight":  # BatchNorm weight
      expected[f"main_{index}/scale"] = shape
    else:
      expected[f"main_{index}/bias"] = shape
  assert flat == expected
  stats = variables["batch_stats"]
  assert {k: v["mean"].shape for k, v in stats.items()} == {
      "main_3": (128,), "main_6": (256,), "main_9": (512,)}


def test_patchgan_batchnorm_state():
  model = PatchGANDiscriminator(base_features=8)
  x = _images(4, 32)
  variables = jax.jit(model.init)(_key(0), x)
  logits, updates = jax.jit(partial(model.apply, train=True, mutable=["batch_stats"]))(
      variables, x)
  chex.assert_shape(logits, (4, 2, 2, 1))
  chex.assert_tree_all_finite(logits)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                         updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  # Eval mode uses the running statistics: per-sample, so a sample's logits do not depend on
  # the rest of the batch.
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply(variables, x[:1]), apply(variables, x)[:1], atol=1e-5)


@pytest.mark.parametrize("norm", ["group", "none"])
def test_patchgan_stateless_norms(norm):
  model = PatchGANDiscriminator(base_features=8, norm=norm, num_groups=4)
  logits, variables = jax.jit(model.init_with_output)(_key(0), _images(2, 32))
  assert set(variables) == {"params"}
  assert variables["params"]["main_2"]["bias"].shape == (16,)  # convs keep their bias
  chex.assert_shape(logits, (2, 2, 2, 1))
  chex.assert_tree_all_finite(logits)


def test_patchgan_rejects_unknown_norm():
  with pytest.raises(ValueError, match="norm must be"):
    jax.eval_shape(PatchGANDiscriminator(norm="layer").init, _key(0), _images(1, 32))


def test_stylegan_logits_and_layout():
  model = StyleGANDiscriminator(base_features=4, max_features=16)
  logits, variables = jax.jit(model.init_with_output)(_key(0), _images(4, 32))
  chex.assert_shape(logits, (4,))
  chex.assert_tree_all_finite(logits)
  chex.assert_type(logits, jnp.float32)
  params = variables["params"]
  # Channels min(16, 4 * 256 / r): 16 at every resolution <= 64.
  assert set(params) == {"conv_in", "block_16", "block_8", "block_4", "conv_out", "fc", "logits"}
  assert params["conv_out"]["kernel"].shape == (3, 3, 16 + 1, 16)  # + minibatch-stddev map
  assert params["fc"]["kernel"].shape == (4 * 4 * 16, 16)
  assert StyleGANDiscriminator().features_at(256) == 64
  assert StyleGANDiscriminator().features_at(64) == 256
  assert StyleGANDiscriminator().features_at(8) == 512


def test_stylegan_rejects_bad_sizes_and_batches():
  def out_shape(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(model.init_with_output, _key(0), x)[0].shape

  model = StyleGANDiscriminator(base_features=4, max_features=8)
  with pytest.raises(ValueError, match="power-of-two"):
    out_shape(model, (4, 24, 24, 3))
  with pytest.raises(ValueError, match="divisible by its group size 4"):
    out_shape(model, (6, 16, 16, 3))
  assert out_shape(model, (3, 16, 16, 3)) == (3,)  # group = min(4, B)
  no_mbstd = StyleGANDiscriminator(base_features=4, max_features=8, mbstd_group_size=0)
  assert out_shape(no_mbstd, (6, 16, 16, 3)) == (6,)


@pytest.mark.parametrize("cls", [PatchGANDiscriminator, StyleGANDiscriminator])
def test_both_discriminators_take_the_train_keyword(cls):
  """One call for either: train=True/False. StyleGAN has no batch statistics, so its logits
  do not depend on the mode; PatchGAN's BatchNorm does (test_patchgan_batchnorm_state)."""
  model = cls.from_preset("tiny")
  x = _images(4, 32)
  variables = jax.jit(model.init)(_key(0), x)
  mutable = ["batch_stats"] if "batch_stats" in variables else False
  train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=mutable))(variables, x)
  logits_train = train[0] if mutable else train
  logits_eval = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  chex.assert_equal_shape([logits_train, logits_eval])
  chex.assert_tree_all_finite((logits_train, logits_eval))
  if cls is StyleGANDiscriminator:
    np.testing.assert_array_equal(logits_train, logits_eval)


PATCH = PatchGANDiscriminator(base_features=8)
STYLE = StyleGANDiscriminator(base_features=4, max_features=16, blur=False)


@pytest.fixture(scope="module")
def f32_variables():
  """Variables do not depend on the compute dtype: initialise once, reuse for f32 and bf16."""
  x = _images(4, 32)
  return jax.jit(PATCH.init)(_key(0), x), jax.jit(STYLE.init)(_key(1), x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradients_are_finite(dtype, f32_variables):
  """f32 and bf16 runs: params f32, compute in dtype, logits f32, finite gradients."""
  patch, style = PATCH.clone(dtype=dtype), STYLE.clone(dtype=dtype)
  pv, sv = f32_variables
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((pv, sv)))
  x = _images(4, 32, dtype)

  def loss(params, x):
    logits_p, _ = patch.apply({"params": params[0], "batch_stats": pv["batch_stats"]}, x,
                              train=True, mutable=["batch_stats"])
    logits_s = style.apply({"params": params[1]}, x)
    assert logits_p.dtype == logits_s.dtype == jnp.float32
    return jnp.mean(logits_p**2) + jnp.mean(logits_s**2)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1)))((pv["params"], sv["params"]), x)
  chex.assert_tree_all_finite(grads)  # (param grads, image grads)
  assert grads[1].dtype == dtype
  assert float(jnp.abs(grads[1].astype(jnp.float32)).max()) > 0


def _numpy_mbstd(x_NCHW, group, feat):
  """rosinality/stylegan2-pytorch's minibatch stddev, in NumPy (NCHW)."""
  b, c, h, w = x_NCHW.shape
  g = min(b, group)
  s = x_NCHW.reshape(g, -1, feat, c // feat, h, w)
  s = np.sqrt(s.var(0) + 1e-8)
  s = s.mean(axis=(2, 3, 4), keepdims=True).squeeze(2)
  s = np.tile(s, (g, 1, h, w))
  return np.concatenate([x_NCHW, s], axis=1)


@pytest.mark.parametrize("batch, group, feat", [(8, 4, 1), (6, 2, 2), (3, 4, 1)])
def test_minibatch_stddev_matches_stylegan2(batch, group, feat):
  x = np.random.default_rng(0).normal(size=(batch, 4, 4, 6)).astype(np.float32)
  ours = minibatch_stddev(jnp.asarray(x), group, feat)
  ref = _numpy_mbstd(x.transpose(0, 3, 1, 2), group, feat).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_blur_downsample():
  x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype(np.float32)
  y = blur_downsample(jnp.asarray(x))
  chex.assert_shape(y, (2, 4, 4, 3))
  # Interior output (1, 1) reads input rows/cols 1..4 with weights [1, 3, 3, 1] / 8 per axis.
  taps = np.array([1, 3, 3, 1]) / 8.0
  expected = np.einsum("i,j,bijc->bc", taps, taps, x[:, 1:5, 1:5, :])
  np.testing.assert_allclose(y[:, 1, 1, :], expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(blur_downsample(jnp.ones((1, 8, 8, 2)))[0, 1:3, 1:3], 1.0, rtol=1e-6)
