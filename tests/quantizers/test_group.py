"""GroupQuantizer: per-group equality with the template, ids [..., G], own params per group."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.quantizers.base import QuantizerOutput
from jaxtok.quantizers.fsq import FSQ
from jaxtok.quantizers.group import GroupQuantizer
from jaxtok.quantizers.kl import KLQuantizer
from jaxtok.quantizers.lfq import LFQ


def test_each_group_is_the_template_on_its_slice(maybe_jit):
  template = LFQ(4, temperature=0.3)
  g = GroupQuantizer(template, groups=3)
  assert (g.input_dim, g.code_dim, g.codebook_size) == (12, 12, 16)
  z = jax.random.normal(jax.random.key(0), (2, 5, 12))
  out, parts, ids, codes = maybe_jit(lambda x: (
      g.apply({}, x), [template.apply({}, x[..., 4 * i:4 * i + 4]) for i in range(3)],
      g.apply({}, x, method="encode"),
      g.apply({}, g.apply({}, x, method="encode"), method="indices_to_codes")))(z)
  assert out.indices.shape == (2, 5, 3)
  np.testing.assert_array_equal(out.indices, np.stack([p.indices for p in parts], -1))
  np.testing.assert_array_equal(out.quantized, np.concatenate([p.quantized for p in parts], -1))
  np.testing.assert_allclose(out.loss, sum(p.loss for p in parts), rtol=1e-6)
  np.testing.assert_allclose(out.metrics["codebook_entropy"],
                             np.mean([p.metrics["codebook_entropy"] for p in parts]), rtol=1e-6)
  for i, p in enumerate(parts):
    np.testing.assert_allclose(out.metrics[f"usage_g{i}"], p.metrics["usage"])
  np.testing.assert_array_equal(ids, out.indices)
  np.testing.assert_array_equal(codes, out.quantized)


def test_fsq_groups_round_trip_under_jit_and_bf16():
  g = GroupQuantizer(FSQ((8, 5, 5)), groups=2)
  z = jax.random.normal(jax.random.key(1), (7, 6)).astype(jnp.bfloat16)
  out = jax.jit(g.apply)({}, z)
  assert out.quantized.dtype == jnp.bfloat16
  codes = jax.jit(lambda i: g.apply({}, i, method="indices_to_codes"))(out.indices)
  np.testing.assert_array_equal(codes.astype(jnp.bfloat16), out.quantized)


class _ScaledSign(nn.Module):
  """A tiny quantizer with a parameter and a state counter, to check per-group copies."""
  input_dim = code_dim = 2
  codebook_size = 4

  @nn.compact
  def __call__(self, z, *, train=False):
    scale = self.param("scale", lambda k: jax.random.uniform(k, ()))
    calls = self.variable("quantizer_state", "calls", lambda: jnp.zeros((), jnp.int32))
    if train:
      calls.value += 1
    q = scale * jnp.sign(z)
    ids = jnp.sum((z > 0) * jnp.array([[1, 2]]), -1).astype(jnp.int32)
    return QuantizerOutput(q, ids, jnp.float32(1.0), {"usage": jnp.float32(0.5),
                                                      "perplexity": jnp.float32(2.0)})


def test_groups_own_their_params_state_and_rng():
  g = GroupQuantizer(_ScaledSign(), groups=2)
  z = jnp.ones((3, 4))
  variables = jax.jit(g.init)(jax.random.key(2), z)
  params = variables["params"]
  assert set(params) == {"group_0", "group_1"}
  assert params["group_0"]["scale"] != params["group_1"]["scale"]
  out, state = jax.jit(lambda v, x: g.apply(v, x, train=True, mutable=["quantizer_state"]))(
      variables, z)
  assert float(out.loss) == 2.0  # summed
  assert int(state["quantizer_state"]["group_1"]["calls"]) == 1
  kl = GroupQuantizer(KLQuantizer(1), groups=2)
  same_in_both = jnp.array([[0.0, 0.0, 0.0, 0.0]])  # (mean, logvar) per group, identical
  sample = jax.jit(lambda x: kl.apply({}, x, train=True, rngs={"quantizer": jax.random.key(3)}))(
      same_in_both).quantized
  assert sample[0, 0] != sample[0, 1]  # each copy draws its own noise


def test_errors_name_the_problem():
  g = GroupQuantizer(FSQ((4, 4)), groups=2)
  with pytest.raises(ValueError, match=r"D=4.*\(3, 5\)"):
    g.apply({}, jnp.zeros((3, 5)))
  with pytest.raises(ValueError, match=r"G=2.*\(3, 3\)"):
    g.apply({}, jnp.zeros((3, 3), jnp.int32), method="indices_to_codes")
  with pytest.raises(ValueError, match=r"\[0, 16\)"):
    g.apply({}, jnp.array([[0, 16]]), method="indices_to_codes")
  with pytest.raises(ValueError, match="groups"):
    GroupQuantizer(FSQ((4, 4)), groups=0)
