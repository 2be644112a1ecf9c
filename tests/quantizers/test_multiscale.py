"""MultiScaleVQ (VAR): resampling equals PyTorch's, every scale prefix decodes, the full set
reconstructs the latent as VAR's code does (tests/fixtures/var, tools/fixtures/var.py)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import weights
from jaxtok.quantizers.multiscale import (
    MultiScaleVQ, area_matrix, bicubic_matrix, phi_index, scale_bounds, split_scales)

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "var"
SCALES = (1, 2, 3, 5, 8)


def test_resampling_matrices_keep_constants_and_known_values():
  for n_in, n_out in ((8, 3), (8, 5), (16, 13), (3, 8), (1, 8)):
    np.testing.assert_allclose(area_matrix(n_in, n_out).sum(1), 1.0, rtol=1e-6) if n_in > n_out \
        else np.testing.assert_allclose(bicubic_matrix(n_in, n_out).sum(1), 1.0, rtol=1e-6)
  # adaptive average pooling 5 -> 3 windows: [0, 2), [1, 4), [3, 5)
  np.testing.assert_allclose(area_matrix(5, 3), [[.5, .5, 0, 0, 0], [0, 1 / 3, 1 / 3, 1 / 3, 0],
                                                 [0, 0, 0, .5, .5]], rtol=1e-6)
  # bicubic 4 -> 8, a = -0.75: output 2 reads source 0.75 with weights (-0.03515625,
  # 0.26171875, 0.87890625, -0.10546875) on inputs (-1, 0, 1, 2); input -1 clamps to 0
  np.testing.assert_allclose(bicubic_matrix(4, 8)[2], [0.2265625, 0.87890625, -0.10546875, 0],
                             rtol=1e-6)


def test_phi_groups_follow_var_ticks():
  # scale 2 of 10 sits halfway between ticks 0 and 1 (2/9 vs 1/12, 13/36); VAR's float
  # arithmetic picks 1, and so must we
  assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
  assert [phi_index(k, 10, 1) for k in range(10)] == [0] * 10
  assert [phi_index(k, 5, 0 or 5) for k in range(5)] == list(range(5))


@pytest.fixture(scope="module")
def reference():
  state = weights.read(str(FIXTURES / "vqvae.pth"))
  params = {"codebook": state["quantize.embedding.weight"].astype(np.float32)}
  for i in range(4):
    w = state[f"quantize.quant_resi.qresi_ls.{i}.weight"].astype(np.float32)
    params[f"phi_{i}"] = {"conv": {"kernel": np.transpose(w, (2, 3, 1, 0)),
                                   "bias": state[f"quantize.quant_resi.qresi_ls.{i}.bias"]
                                   .astype(np.float32)}}
  model = MultiScaleVQ(codebook_size=64, dim=8, patch_nums=SCALES)
  return model, {"params": params}, dict(np.load(FIXTURES / "vqvae.npz"))


def test_matches_var_at_every_scale(reference):
  model, variables, ref = reference

  @jax.jit
  def run(z):
    out = model.apply(variables, z)
    maps = model.apply(variables, z, method="encode_scales")
    return out, maps, model.apply(variables, out.indices, method="next_scale_inputs")

  out, maps, tf_input = run(jnp.asarray(ref["latent"]))
  assert out.indices.shape == (2, sum(p * p for p in SCALES)) and out.indices.dtype == jnp.int32
  np.testing.assert_array_equal(out.indices, ref["ids"])  # identical at every scale
  np.testing.assert_allclose(out.quantized, ref["f_hat"], atol=1e-5)
  np.testing.assert_allclose(tf_input, ref["tf_input"], atol=1e-5)
  assert [m.shape[1:] for m in maps] == [(p, p) for p in SCALES]
  np.testing.assert_array_equal(jnp.concatenate([m.reshape(2, -1) for m in maps], 1), ref["ids"])


def test_every_prefix_decodes_and_the_full_set_is_quantized(reference):
  model, variables, ref = reference
  z = jnp.asarray(ref["latent"])

  @jax.jit
  def prefixes(z):
    out = model.apply(variables, z)
    return out, [model.apply(variables, out.indices[:, :end], method="indices_to_codes")
                 for _, end in scale_bounds(SCALES)]

  out, decoded = prefixes(z)
  errors = [float(jnp.mean(jnp.square(z)))]
  for codes in decoded:
    assert codes.shape == z.shape
    errors.append(float(jnp.mean(jnp.square(codes - z))))
  np.testing.assert_array_equal(decoded[-1], out.quantized)  # the full set: exactly quantized
  assert errors[-1] < 0.5 * errors[0], errors
  assert [m.shape for m in split_scales(out.indices[:, :14], SCALES)] == [
      (2, 1, 1), (2, 2, 2), (2, 3, 3)]
  with pytest.raises(ValueError, match="whole scales"):
    model.apply(variables, out.indices[:, :6], method="indices_to_codes")


def test_loss_trains_codebook_and_phi_and_gradient_reaches_z(reference):
  model, variables, ref = reference
  z = jnp.asarray(ref["latent"])

  def loss(params, z):
    out = model.apply({"params": params}, z)
    return out.loss + jnp.sum(out.quantized * 0.1), out.metrics

  (value, metrics), (g_params, g_z) = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True))(
      variables["params"], z)
  assert np.isfinite(value) and 0 < float(metrics["usage"]) <= 1
  assert float(jnp.abs(g_params["codebook"]).sum()) > 0
  assert float(jnp.abs(g_params["phi_0"]["conv"]["kernel"]).sum()) > 0
  assert float(jnp.abs(g_z).sum()) > 0
  with pytest.raises(ValueError, match=r"\[B, 8, 8, 8\]"):
    model.apply(variables, z[:, :4, :4])
