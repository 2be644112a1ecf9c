"""VAR: parameter counts, block-causality, KV-cache sampling against teacher forcing,
sharding. (Parity with VAR's own code: tests/convert/test_var.py.)"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.models.generators.var import VAR, block_causal_mask, var_cfg_scale
from jaxtok.models.tokenizers.var_vqvae import VQVAE
from jaxtok.quantizers.multiscale import MultiScaleVQ, scale_bounds

K, D, SCALES, CLASSES = 16, 4, (1, 2, 3, 4), 5  # L = 30
TINY = dict(codebook_size=K, latent_dim=D, patch_nums=SCALES, num_classes=CLASSES, width=32,
            depth=2, num_heads=2)
L = sum(p * p for p in SCALES)


def _count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_presets_have_vars_parameter_counts():
  # Counted from VAR's own code (models/var.py, vqvae.py built on torch's meta device).
  expected = {"VAR-d16": 310_283_520, "VAR-d20": 600_917_136, "VAR-d24": 1_033_399_360,
              "VAR-d30": 2_010_020_356}
  inputs = jnp.zeros((1, 679, 32))
  for name, count in expected.items():
    model = VAR.from_preset(name)
    assert _count(jax.eval_shape(model.init, jax.random.key(0), inputs)) == count, name
  tokenizer = VQVAE.from_preset("var-vqvae-f16", quantizer=MultiScaleVQ())
  shapes = jax.eval_shape(tokenizer.init, jax.random.key(0), jnp.zeros((1, 256, 256, 3)))
  assert _count(shapes) == 108_948_355
  assert _count(shapes["params"]["quantizer"]) == 168_064
  assert tokenizer.token_shape((256, 256)) == (680,)


def _random_like(abstract, seed: int, scale: float = 0.3):
  """Random normal arrays of the shapes of an eval_shape tree (no init compiled)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape) * scale, a.dtype),
                      nn.unbox(abstract))


@pytest.fixture(scope="module")
def tiny():
  """A tiny VAR and its quantizer with random variables (every tensor, the head included,
  so logits depend on everything)."""
  model, quantizer = VAR(**TINY), MultiScaleVQ(K, D, SCALES)
  variables = _random_like(jax.eval_shape(model.init, jax.random.key(0),
                                          jnp.zeros((2, L - 1, D)), jnp.array([1, 2])), 0)
  q_vars = _random_like(jax.eval_shape(quantizer.init, jax.random.key(2),
                                       jnp.zeros((1, 4, 4, D))), 1, scale=1.0)
  return model, variables, quantizer, q_vars


def test_block_causal_mask_and_cfg_ramp():
  mask = block_causal_mask((1, 2))
  np.testing.assert_array_equal(mask, [[1, 0, 0, 0, 0]] + [[1, 1, 1, 1, 1]] * 4)
  assert [var_cfg_scale(k, 5, 2.5, "linear") for k in range(5)] == [1.0, 1.375, 1.75, 2.125,
                                                                    2.5]
  assert var_cfg_scale(3, 5, 2.5, "constant") == 2.5


def test_a_scale_depends_on_earlier_scales_and_itself_only(tiny):
  model, variables, _, _ = tiny
  inputs = jax.random.normal(jax.random.key(4), (1, L - 1, D))
  bounds = scale_bounds(SCALES)

  def per_scale(inputs):
    logits = model.apply(variables, inputs, jnp.array([3]))
    return jnp.stack([jnp.sum(logits[:, b:e] ** 2) for b, e in bounds])

  jacobian = jax.jit(jax.jacrev(per_scale))(inputs)[:, 0]  # [S, L - 1, D]
  for k in range(len(SCALES)):
    for j in range(1, len(SCALES)):  # input t feeds token t + 1
      seen = float(jnp.abs(jacobian[k, bounds[j][0] - 1:bounds[j][1] - 1]).sum())
      assert (seen > 0) == (j <= k), (k, j, seen)


def test_kv_cache_sampling_equals_teacher_forcing_under_greedy(tiny):
  model, variables, quantizer, q_vars = tiny
  labels = jnp.array([1, 4], jnp.int32)
  ids = model.sample(variables, 0, labels, quantizer=quantizer, quantizer_variables=q_vars,
                     cfg_scale=3.0, temperature=0.0)
  assert ids.shape == (2, L) and ids.dtype == jnp.int32
  inputs = quantizer.apply(q_vars, ids, method="next_scale_inputs")
  both = jax.jit(model.apply)(variables, jnp.concatenate([inputs, inputs]),
                              jnp.concatenate([labels, labels]),
                              drop_cond=jnp.array([False, False, True, True]))
  cond, uncond = both[:2], both[2:]
  guided = []
  for k, (begin, end) in enumerate(scale_bounds(SCALES)):
    s = var_cfg_scale(k, len(SCALES), 3.0, "linear")
    guided.append(uncond[:, begin:end] + s * (cond[:, begin:end] - uncond[:, begin:end]))
  np.testing.assert_array_equal(jnp.argmax(jnp.concatenate(guided, 1), -1), ids)
  again = model.sample(variables, 0, labels, quantizer=quantizer, quantizer_variables=q_vars,
                       cfg_scale=3.0, temperature=0.0)
  np.testing.assert_array_equal(again, ids)


def test_training_drops_the_class_and_paths(tiny):
  """train=True: condition dropout 1 is the null class for every sample; stochastic depth
  changes the output with the rng and leaves eval untouched."""
  model, variables, _, _ = tiny
  inputs = jax.random.normal(jax.random.key(6), (2, L - 1, D))
  labels = jnp.array([1, 2])

  @jax.jit
  def run(key):
    dropped = model.clone(cond_dropout=1.0).apply(variables, inputs, labels, train=True,
                                                  rngs={"dropout": key})
    null = model.apply(variables, inputs, labels, drop_cond=jnp.ones((2,), bool))
    deep = model.clone(cond_dropout=0.0, drop_path_rate=0.5)
    return (dropped, null, deep.apply(variables, inputs, labels, train=True,
                                      rngs={"dropout": key}),
            deep.apply(variables, inputs, labels), model.apply(variables, inputs, labels))

  dropped, null, stochastic, deep_eval, plain = run(jax.random.key(7))
  np.testing.assert_allclose(dropped, null, rtol=1e-5, atol=1e-5)  # other fusions: ulps
  np.testing.assert_array_equal(deep_eval, plain)  # drop path is off outside training
  assert np.isfinite(stochastic).all() and not np.allclose(stochastic, plain)


def test_inputs_are_checked(tiny):
  model, variables, quantizer, q_vars = tiny
  with pytest.raises(ValueError, match=r"inputs must be \[B, 29, 4\]"):
    model.apply(variables, jnp.zeros((1, 28, D)), jnp.array([0]))
  with pytest.raises(ValueError, match="needs quantizer= and quantizer_variables="):
    model.sample(variables, 0, jnp.array([0]))
  with pytest.raises(ValueError, match=r"patch_nums \(1, 2, 3, 4\); got MultiScaleVQ"):
    model.sample(variables, 0, jnp.array([0]), quantizer=MultiScaleVQ(K, D, (1, 2)),
                 quantizer_variables=q_vars)


RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
         ("heads", "tensor"), ("kv", None), ("vocab", "tensor"), ("classes", None),
         ("layers", None), ("norm", None))


def test_sharded_forward_equals_single_device(tiny):
  if jax.device_count() < 8:
    pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
  model, variables, _, _ = tiny
  inputs = jax.random.normal(jax.random.key(5), (8, L - 1, D))
  labels = jnp.arange(8, dtype=jnp.int32) % CLASSES
  expected = jax.jit(model.apply)(variables, inputs, labels)
  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  boxed = jax.eval_shape(model.init, jax.random.key(0), inputs, labels)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, RULES)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  with jax.set_mesh(mesh):
    placed = jax.device_put(variables, shardings)
    kernel = placed["params"]["blocks"]["fc1"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    got = jax.jit(model.apply)(placed, jax.device_put(inputs, batch),
                               jax.device_put(labels, batch))
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * scale)


def test_vqvae_gradients_reach_encoder_codebook_phi_and_decoder():
  """The tokenizer trainer's objective through the multi-scale quantizer: reconstruction +
  VAR's VQ loss; every part gets a gradient (straight-through to the encoder)."""
  tokenizer = VQVAE.from_preset("tiny", quantizer=MultiScaleVQ(K, 8, (1, 2, 4)))
  images = jax.random.uniform(jax.random.key(8), (2, 8, 8, 3), minval=-1, maxval=1)
  params = _random_like(jax.eval_shape(tokenizer.init, jax.random.key(0), images), 3, 0.1)
  params = params["params"]

  @jax.jit
  def grads(params):
    def loss(params):
      out = tokenizer.apply({"params": params}, images, train=True)
      return jnp.mean(jnp.square(out.reconstruction - images)) + out.quantizer_output.loss
    return jax.grad(loss)(params)

  g = grads(params)
  for path in (("encoder", "conv_in", "kernel"), ("quantizer", "codebook"),
               ("quantizer", "phi_0", "conv", "kernel"), ("decoder", "conv_out", "kernel")):
    leaf = g
    for key in path:
      leaf = leaf[key]
    assert np.isfinite(leaf).all() and float(jnp.abs(leaf).sum()) > 0, path
  assert tokenizer.token_shape((8, 8)) == (21,)
