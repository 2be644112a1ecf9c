"""Attention function, RoPE, transformer block and stack: numerics and properties."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.layers import rope
from jaxtok.layers.attention import Attention, cudnn_supports, dot_product_attention
from jaxtok.layers.transformer import Transformer, TransformerBlock


def _numpy_attention(q, k, v, mask=None):
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask, logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bnts,bsnh->btnh", weights, v)


def _qkv(seed, b=2, t=5, s=7, n=3, h=8, dtype=jnp.float32):
  rng = np.random.default_rng(seed)  # numpy: no compile per shape
  return tuple(jnp.asarray(rng.standard_normal(shape, np.float32).astype(dtype))
               for shape in ((b, t, n, h), (b, s, n, h), (b, s, n, h)))


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def _init(model, *args, **kwargs):
  """model.init under jit: one compile instead of many small eager ones."""
  return jax.jit(lambda *a: model.init(jax.random.key(0), *a, **kwargs))(*args)


# -- attention function ---------------------------------------------------------------------

def test_attention_equals_numpy_softmax_attention():
  q, k, v = _qkv(0)
  np.testing.assert_allclose(dot_product_attention(q, k, v), _numpy_attention(q, k, v),
                             rtol=1e-5, atol=1e-5)


def test_attention_mask_and_causal_equal_numpy():
  q, k, v = _qkv(1, t=6, s=6)
  mask = np.random.default_rng(2).random((2, 1, 6, 6)) < 0.7
  mask[..., 0] = True
  np.testing.assert_allclose(dot_product_attention(q, k, v, mask=mask),
                             _numpy_attention(q, k, v, np.asarray(mask)), rtol=1e-5, atol=1e-5)
  causal = np.tril(np.ones((6, 6), bool))
  np.testing.assert_allclose(dot_product_attention(q, k, v, causal=True),
                             _numpy_attention(q, k, v, causal), rtol=1e-5, atol=1e-5)


def test_attention_bf16_is_close_to_f32_and_keeps_dtype():
  q, k, v = _qkv(3)
  out = dot_product_attention(*(a.astype(jnp.bfloat16) for a in (q, k, v)))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32), _numpy_attention(q, k, v),
                             atol=5e-2, rtol=5e-2)


def test_cudnn_is_chosen_only_for_supported_inputs():
  bf16 = _qkv(4, h=64, dtype=jnp.bfloat16)
  assert cudnn_supports(*bf16, capability=(9, 0))
  assert cudnn_supports(*bf16, capability=(8, 0))
  assert not cudnn_supports(*bf16, capability=(7, 5))  # pre-Ampere
  assert not cudnn_supports(*_qkv(4, h=64), capability=(9, 0))  # f32
  assert not cudnn_supports(*_qkv(4, h=12, dtype=jnp.bfloat16),
                            capability=(9, 0))  # head dim not a multiple of 8
  h256 = _qkv(4, h=256, dtype=jnp.float16)
  assert cudnn_supports(*h256, capability=(9, 0)) and not cudnn_supports(*h256,
                                                                          capability=(8, 6))
  odd = _qkv(4, t=5, s=7, h=64, dtype=jnp.bfloat16)
  assert cudnn_supports(*odd, capability=(9, 0))
  assert not cudnn_supports(*odd, mask=jnp.ones((1, 1, 5, 7), bool), capability=(9, 0))
  # On this CPU host the default choice is XLA, for every dtype.
  assert not cudnn_supports(*bf16)
  assert dot_product_attention(*bf16).shape == bf16[0].shape


def test_attention_rejects_bad_arguments():
  q, k, v = _qkv(5)
  with pytest.raises(ValueError, match="implementation"):
    dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match=r"\[B, T, N, H\]"):
    dot_product_attention(q[0], k[0], v[0])


# -- RoPE -----------------------------------------------------------------------------------

def _score(x_q, x_k, pos_q, pos_k, apply):
  """q . k after rotating q to pos_q and k to pos_k (one token, one head)."""
  rq = apply(x_q[None, None, None], jnp.asarray([pos_q]))[0, 0, 0]
  rk = apply(x_k[None, None, None], jnp.asarray([pos_k]))[0, 0, 0]
  return float(jnp.dot(rq, rk))


def test_rope_1d_scores_depend_only_on_position_difference():
  x_q, x_k = _normal(60, (16,)), _normal(61, (16,))
  same_gap = [_score(x_q, x_k, m, m - 3, rope.apply_rope) for m in (3, 10, 57, 300)]
  np.testing.assert_allclose(same_gap, same_gap[0], rtol=1e-4, atol=1e-4)
  assert abs(_score(x_q, x_k, 10, 10, rope.apply_rope) - same_gap[0]) > 1e-3
  # Position 0 is the identity, and rotations keep norms.
  x = _normal(62, (2, 5, 3, 16))
  np.testing.assert_allclose(rope.apply_rope(x, jnp.zeros((2, 5))), x, atol=1e-6)
  np.testing.assert_allclose(jnp.linalg.norm(rope.apply_rope(x, jnp.arange(5)), axis=-1),
                             jnp.linalg.norm(x, axis=-1), rtol=1e-5)


def test_rope_2d_scores_depend_only_on_row_and_column_differences():
  x_q, x_k = _normal(70, (16,)), _normal(71, (16,))
  score = lambda pq, pk: _score(x_q, x_k, pq, pk, rope.apply_rope_2d)  # noqa: E731
  base = score((2, 5), (1, 3))
  for shift in ((0, 4), (7, 0), (11, 13)):
    moved = score((2 + shift[0], 5 + shift[1]), (1 + shift[0], 3 + shift[1]))
    np.testing.assert_allclose(moved, base, rtol=1e-4, atol=1e-4)
  assert abs(score((2, 5), (3, 1)) - base) > 1e-3  # transposed offset: a different pair


def test_rope_2d_rotates_first_half_by_row_and_second_half_by_column():
  x = _normal(8, (1, 4, 2, 16))
  pos = rope.grid_positions(2, 2)  # (0,0) (0,1) (1,0) (1,1)
  np.testing.assert_array_equal(pos, [[0, 0], [0, 1], [1, 0], [1, 1]])
  out = rope.apply_rope_2d(x, pos)
  np.testing.assert_allclose(out[:, 1, :, :8], x[:, 1, :, :8], atol=1e-6)  # row 0
  np.testing.assert_allclose(out[:, 2, :, 8:], x[:, 2, :, 8:], atol=1e-6)  # column 0
  # Each half equals 1D RoPE of a head of half the size.
  np.testing.assert_allclose(out[..., 8:], rope.apply_rope(x[..., 8:], pos[:, 1]), atol=1e-6)
  np.testing.assert_allclose(out[..., :8], rope.apply_rope(x[..., :8], pos[:, 0]), atol=1e-6)
  with pytest.raises(ValueError, match="divisible by 4"):
    rope.apply_rope_2d(x[..., :6], pos)


@pytest.mark.parametrize("kind, positions", [
    ("1d", jnp.arange(6)),
    ("2d", rope.grid_positions(2, 3)),
])
def test_attention_with_rope_is_invariant_to_shifting_all_positions(kind, positions):
  layer = Attention(num_heads=2, head_dim=8, features=16, rope=kind)
  x = _normal(9, (2, 6, 16))
  params = _init(layer, x, positions=positions)
  out = layer.apply(params, x, positions=positions)
  np.testing.assert_allclose(layer.apply(params, x, positions=positions + 17), out,
                             rtol=1e-4, atol=1e-4)


# -- block and stack ------------------------------------------------------------------------

@pytest.mark.parametrize("norm, activation", [("layernorm", "gelu"), ("rmsnorm", "swiglu")])
def test_block_shapes_and_parameter_names(norm, activation):
  block = TransformerBlock(num_heads=4, mlp_dim=24, norm=norm, mlp_activation=activation)
  x = _normal(11, (2, 5, 16))
  variables = _init(block, x)
  assert block.apply(variables, x).shape == x.shape
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["attn"]["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(specs["attn"]["out"]["kernel"]) == ("heads", "kv", "embed")
  mlp_in = "wi_gate" if activation == "swiglu" else "wi"
  assert tuple(specs["mlp"][mlp_in]["kernel"]) == ("embed", "mlp")
  assert ("bias" in variables["params"]["attn_norm"]) == (norm == "layernorm")


def _loop_params_from_scan(scan_params, num_layers):
  layers = scan_params["layers"]
  out = {f"layer_{i}": jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)}
  out["final_norm"] = scan_params["final_norm"]
  return out


def test_scanned_and_looped_stacks_compute_the_same_function():
  kwargs = dict(num_layers=3, num_heads=2, mlp_dim=32, rope="1d")
  x = _normal(13, (2, 5, 16))
  scanned = Transformer(**kwargs)
  boxed = _init(scanned, x)
  variables = nn.unbox(boxed)
  assert variables["params"]["layers"]["attn"]["query"]["kernel"].shape == (3, 16, 2, 8)
  looped_params = _loop_params_from_scan(variables["params"], 3)
  looped = jax.jit(Transformer(**kwargs, scan_layers=False).apply)
  np.testing.assert_allclose(looped({"params": looped_params}, x),
                             jax.jit(scanned.apply)(variables, x), rtol=1e-5, atol=1e-5)
  spec = nn.get_partition_spec(boxed)
  assert tuple(spec["params"]["layers"]["attn"]["query"]["kernel"]) == (
      "layers", "embed", "heads", "kv")


@pytest.mark.parametrize("causal", [True, False])
def test_causal_output_at_t_has_no_gradient_from_later_inputs(causal):
  model = Transformer(num_layers=2, num_heads=2, mlp_dim=32, causal=causal)
  x = _normal(15, (1, 6, 16))
  variables = _init(model, x)
  t = 2
  grad = jax.jit(jax.grad(lambda x: model.apply(variables, x)[0, t].sum()))(x)
  per_position = np.abs(np.asarray(grad[0])).sum(-1)  # [T]
  assert np.all(per_position[:t + 1] > 0)
  if causal:
    np.testing.assert_array_equal(per_position[t + 1:], 0.0)
  else:
    assert np.all(per_position[t + 1:] > 0)


def test_bf16_compute_keeps_f32_params_and_finite_gradients():
  model = Transformer(num_layers=2, num_heads=2, mlp_dim=32, dtype=jnp.bfloat16,
                      mlp_activation="swiglu", norm="rmsnorm", rope="1d")
  x = _normal(17, (2, 5, 16))
  variables = nn.unbox(_init(model, x))
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(variables))
  loss = lambda v: jnp.mean(model.apply(v, x) ** 2)  # noqa: E731
  grads = jax.jit(jax.grad(loss))(variables)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


def test_dropout_is_active_only_when_not_deterministic():
  model = Transformer(num_layers=2, num_heads=2, mlp_dim=32, dropout_rate=0.5)
  x = _normal(19, (2, 5, 16))
  variables = _init(model, x)
  apply = jax.jit(model.apply, static_argnames="deterministic")
  eval_out = apply(variables, x)
  np.testing.assert_array_equal(apply(variables, x, deterministic=True), eval_out)
  train = lambda seed: apply(variables, x, deterministic=False,  # noqa: E731
                             rngs={"dropout": jax.random.key(seed)})
  assert not np.allclose(train(0), eval_out)
  assert not np.allclose(train(0), train(1))


def test_width_not_divisible_by_heads_is_a_clear_error():
  with pytest.raises(ValueError, match="not divisible by num_heads=3"):
    TransformerBlock(num_heads=3, mlp_dim=8).init(jax.random.key(0), jnp.ones((1, 2, 16)))
