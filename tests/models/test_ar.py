"""LlamaGen GPT: parameter counts, causality, KV-cache decoding, sampling, learning, sharding."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtok.models.generators import ar
from jaxtok.models.generators.ar import GPT

K, GRID, CLASSES = 16, (3, 4), 5  # codebook, token grid (T = 12), classes
TINY = dict(codebook_size=K, token_shape=GRID, num_classes=CLASSES, width=32, depth=2,
            num_heads=2, mlp_dim=64)
PREFIX = dict(num_prefix_tokens=2, prefix_dim=6)


def _ints(seed, shape, high):
  return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


def _init_random(model, tokens, labels, prefix=None, seed=0):
  """Unboxed variables with a random (not zero-initialised) head, so logits depend on x."""
  variables = nn.unbox(jax.jit(lambda: model.init(jax.random.key(seed), tokens, labels,
                                                  prefix=prefix))())
  head = variables["params"]["head"]["kernel"]  # [E, K]; logits of order 1
  variables["params"]["head"]["kernel"] = jax.random.normal(
      jax.random.key(seed + 1), head.shape) * head.shape[0] ** -0.5
  return variables


@pytest.fixture(scope="module")
def tiny():
  """A tiny 2D-RoPE model with 2 prefix tokens, its variables and a batch of inputs."""
  model = GPT(**TINY, **PREFIX)
  tokens, labels = _ints(0, (2, *GRID), K), jnp.array([1, 4], jnp.int32)
  prefix = jnp.asarray(np.random.default_rng(1).standard_normal((2, 2, 6)), jnp.float32)
  return model, _init_random(model, tokens, labels, prefix), tokens, labels, prefix


# -- layout ---------------------------------------------------------------------------------

def llamagen_param_count(dim, n_layer, vocab=16384, num_classes=1000):
  """Parameters of LlamaGen's c2i Transformer, read off its PyTorch modules.

  cls_embedding (num_classes + 1 rows: class_dropout_prob > 0 adds the null class),
  tok_embeddings [vocab, dim]; per layer wqkv [dim, 3 dim] and wo [dim, dim] (no biases),
  FeedForward w1, w3 [dim, hidden] and w2 [hidden, dim] with hidden =
  find_multiple(int(2 * 4 dim / 3), 256), two RMSNorm weights [dim]; final norm [dim] and
  output [dim, vocab] (no bias). freqs_cis and the KV cache are buffers, not parameters.
  """
  hidden = -(-int(2 * 4 * dim / 3) // 256) * 256
  per_layer = 3 * dim * dim + dim * dim + 3 * dim * hidden + 2 * dim
  return (num_classes + 1) * dim + vocab * dim + n_layer * per_layer + dim + dim * vocab


@pytest.mark.parametrize("name, dim, n_layer, expected", [
    ("GPT-B", 768, 12, 110_888_448),  # LlamaGen's comment: 111M
    ("GPT-L", 1024, 24, 342_910_976),  # 343M
    ("GPT-XL", 1280, 36, 774_699_520),  # 775M
])
def test_preset_parameter_counts_equal_llamagen(name, dim, n_layer, expected):
  """The counts test_presets.py asserts on the built models, derived from LlamaGen's code."""
  assert llamagen_param_count(dim, n_layer) == expected
  model = GPT.from_preset(name, codebook_size=16384)
  assert (model.width, model.depth) == (dim, n_layer)


def test_parameter_names_and_logical_axes(tiny):
  model, variables, tokens, labels, prefix = tiny
  params = variables["params"]
  assert params["cond_embed"]["class_embed"]["embedding"].shape == (CLASSES + 1, 32)
  assert params["token_embed"]["embedding"].shape == (K, 32)
  assert params["transformer"]["layers"]["mlp"]["wi_gate"]["kernel"].shape == (2, 32, 64)
  assert "bias" not in params["transformer"]["layers"]["attn"]["query"]  # bias-free
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, labels, prefix=prefix)
  specs = nn.get_partition_spec(boxed)["params"]
  assert tuple(specs["token_embed"]["embedding"]) == ("vocab", "embed")
  assert tuple(specs["head"]["kernel"]) == ("embed", "vocab")
  assert ar.llamagen_mlp_dim(768) == 2048 and ar.llamagen_mlp_dim(1280) == 3584


# -- training forward -----------------------------------------------------------------------

def test_logits_at_t_get_no_gradient_from_tokens_at_or_after_t(tiny):
  """Token i has id i (all distinct), so row i of the token table's gradient is the
  influence of input position i; logits[t] may depend on tokens < t only."""
  model, variables, _, labels, prefix = tiny
  tokens = jnp.arange(12, dtype=jnp.int32).reshape(1, *GRID)

  def logit_sum(table, prefix, t):
    params = {**variables["params"], "token_embed": {"embedding": table}}
    logits = model.apply({"params": params}, tokens, labels[:1], prefix=prefix)
    return logits.reshape(12, K)[t].sum()

  grad = jax.jit(jax.grad(logit_sum, argnums=(0, 1)))
  for t in (0, 5, 11):
    g_table, g_prefix = grad(variables["params"]["token_embed"]["embedding"], prefix[:1], t)
    per_token = np.abs(np.asarray(g_table)).sum(-1)  # [K]; ids >= 12 are never used
    assert np.all(per_token[:t] > 0), t
    np.testing.assert_array_equal(per_token[t:], 0.0)
    assert np.abs(np.asarray(g_prefix)).sum() > 0  # every token sees the condition


def test_null_condition_and_condition_dropout(tiny):
  model, variables, tokens, labels, prefix = tiny
  forward = jax.jit(lambda lab, pre, drop: model.apply(variables, tokens, lab, prefix=pre,
                                                       drop_cond=drop))
  keep, drop = jnp.zeros((2,), bool), jnp.ones((2,), bool)
  logits = forward(labels, prefix, keep)
  chex.assert_shape(logits, (2, *GRID, K))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  # Dropped conditions ignore labels and prefix; kept ones do not.
  np.testing.assert_allclose(forward(labels, prefix, drop), forward(labels[::-1], -prefix, drop),
                             atol=1e-6)
  assert not np.allclose(forward(labels[::-1], prefix, keep), logits, atol=1e-3)
  # No labels and no prefix: the null condition; a prefix without labels still counts.
  unconditional = jax.jit(lambda pre: model.apply(variables, tokens, prefix=pre))
  np.testing.assert_allclose(unconditional(None), forward(labels, prefix, drop), atol=1e-6)
  assert not np.allclose(unconditional(prefix), forward(labels, prefix, drop), atol=1e-3)
  # cond_dropout=1 in training drops every condition (other dropouts off: deterministic).
  always = GPT(**TINY, **PREFIX, cond_dropout=1.0, token_dropout=0.0, resid_dropout=0.0)
  trained = jax.jit(lambda: always.apply(variables, tokens, labels, prefix=prefix, train=True,
                                         rngs={"dropout": jax.random.key(3)}))()
  np.testing.assert_allclose(trained, forward(labels, prefix, drop), atol=1e-5)


def test_bad_inputs_are_clear_errors(tiny):
  model, variables, tokens, labels, prefix = tiny
  with pytest.raises(ValueError, match=r"tokens must have shape \[B, 3, 4\]"):
    model.apply(variables, tokens.reshape(2, 12), labels, prefix=prefix)
  with pytest.raises(ValueError, match=r"tokens must lie in \[0, 16\)"):
    model.apply(variables, tokens.at[0, 0, 0].set(16), labels, prefix=prefix)
  with pytest.raises(TypeError, match="tokens must be integer"):
    model.apply(variables, tokens.astype(jnp.float32), labels, prefix=prefix)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
    model.apply(variables, tokens, jnp.array([0, 5]), prefix=prefix)
  with pytest.raises(ValueError, match=r"prefix must have shape \(2, 2, 6\)"):
    model.apply(variables, tokens, labels, prefix=prefix[:, :1])
  with pytest.raises(ValueError, match="pass prefix"):
    model.apply(variables, tokens, labels)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
    model.sample(variables, 0, jnp.array([7]), prefix=prefix[:1])
  with pytest.raises(ValueError, match="token_shape must be"):
    GPT(**{**TINY, "token_shape": (2, 2, 2)}).init(jax.random.key(0),
                                                   jnp.zeros((1, 2, 2, 2), jnp.int32))


# -- decoding -------------------------------------------------------------------------------

@pytest.mark.parametrize("fields", [
    dict(**PREFIX),  # 2D RoPE over the grid, condition tokens with zero q/k, scanned layers
    dict(token_shape=(12,), positions="learned", scan_layers=False),  # 1D, unrolled layers
], ids=["rope2d-prefix-scan", "learned1d-loop"])
def test_kv_cache_decoding_equals_full_forward(fields):
  model = GPT(**{**TINY, **fields})
  prefix = (jnp.asarray(np.random.default_rng(2).standard_normal((2, 2, 6)), jnp.float32)
            if model.num_prefix_tokens else None)
  tokens, labels = _ints(3, (2, *model.token_shape), K), jnp.array([0, 3], jnp.int32)
  variables = _init_random(model, tokens, labels, prefix)
  full = jax.jit(lambda v: model.apply(v, tokens, labels, prefix=prefix))(variables)

  @jax.jit
  def decode(variables):
    cache = model.init_cache(2)
    first, cache = model.apply(variables, labels, prefix, jnp.zeros((2,), bool), cache,
                               method=GPT.prefill)
    def step(cache, s):
      logits, cache = model.apply(variables, tokens.reshape(2, 12)[:, s], s, cache,
                                  method=GPT.decode_step)
      return cache, logits
    _, rest = jax.lax.scan(step, cache, jnp.arange(11))
    return jnp.concatenate([first[:, None], rest.transpose(1, 0, 2)], axis=1)

  np.testing.assert_allclose(decode(variables), full.reshape(2, 12, K), rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded_batched_and_in_range(tiny):
  model, variables, _, labels, prefix = tiny
  kwargs = dict(prefix=prefix, cfg_scale=2.0, cfg_schedule="linear", top_k=8, top_p=0.9)
  first = model.sample(variables, 0, labels, **kwargs)
  chex.assert_shape(first, (2, *GRID))
  chex.assert_type(first, jnp.int32)
  np.testing.assert_array_equal(model.sample(variables, jax.random.key(0), labels, **kwargs),
                                first)
  assert not np.array_equal(model.sample(variables, 1, labels, **kwargs), first)
  # Unconditional (null class and null prefix), bare params tree, plain sampling.
  free = model.sample(variables["params"], 2, num_samples=3)
  chex.assert_shape(free, (3, *GRID))
  chex.assert_type(free, jnp.int32)
  for ids in (first, free):
    assert int(ids.min()) >= 0 and int(ids.max()) < K


def test_tiny_model_learns_a_pattern_and_samples_it_greedily():
  """Token i of class c is (3c + i (c + 1)) mod K: 300 Adam steps bring the loss under
  0.05 nats, and greedy sampling (temperature 0) reproduces the pattern exactly."""
  model = GPT(**{**TINY, "num_classes": 4}, cond_dropout=0.0, token_dropout=0.0,
              resid_dropout=0.0)
  labels = jnp.arange(4, dtype=jnp.int32)
  index = jnp.arange(12)[None]
  tokens = ((3 * labels[:, None] + index * (labels[:, None] + 1)) % K).reshape(4, *GRID)
  params = jax.jit(model.init)(jax.random.key(0), tokens, labels)["params"]
  optimizer = optax.adam(1e-2)

  def loss_fn(params):
    logits = model.apply({"params": params}, tokens, labels)
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

  @jax.jit
  def train(params):
    def step(carry, _):
      params, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                       length=300)
    return params, losses

  params, losses = train(params)
  assert float(losses[-1]) < 0.05, losses[::50]
  np.testing.assert_array_equal(model.sample(params, 0, labels, temperature=0.0), tokens)


# -- sharding -------------------------------------------------------------------------------

RULES = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"),
         ("heads", "tensor"), ("kv", None), ("vocab", "tensor"), ("classes", None),
         ("layers", None), ("norm", None))


def test_sharded_forward_equals_single_device():
  if jax.device_count() < 8:
    pytest.skip("needs the 8 fake CPU devices of tests/conftest.py")
  model = GPT(**TINY)
  tokens, labels = _ints(4, (8, *GRID), K), _ints(5, (8,), CLASSES)
  variables = _init_random(model, tokens, labels)
  expected = jax.jit(model.apply)(variables, tokens, labels)

  mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 3)
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens, labels)
  shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, RULES)
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
  with jax.set_mesh(mesh):
    placed = jax.device_put(variables, shardings)
    kernel = placed["params"]["transformer"]["layers"]["mlp"]["wi_gate"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    got = jax.jit(model.apply)(placed, jax.device_put(tokens, batch),
                               jax.device_put(labels, batch))
  # 1e-6 of the logits' scale (|logit| <= ~4 here): even pure data parallelism moves them by
  # ~1.7e-6 (a few f32 ulps), as a per-device batch of 2 instead of 8 changes how the CPU
  # matmuls block their sums.
  scale = float(jnp.abs(expected).max())
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * scale)
