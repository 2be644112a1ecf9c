"""RAR converter: the authors' tiny random RAR (tools/fixtures/rar.py) converts to logits
within 1e-4 in raster and random orders and identical greedy samples, with and without
guidance; the presets' fields are what the converter reads off full-size shapes."""

import os

import numpy as np
import pytest

import jaxtok
from jaxtok import convert, weights
from jaxtok.convert import common, rar
from jaxtok.models.generators.rar import RAR

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "rar")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("rar"))
  convert.convert("rar-b", os.path.join(FIXTURES, "rar.pth"), out, token_shape=[3, 3])
  return jaxtok.load(out), dict(np.load(os.path.join(FIXTURES, "rar.npz")))


def test_logits_match_the_authors_in_raster_and_random_orders(converted):
  gen, ref = converted
  model, variables = gen.model, gen.variables
  tokens, labels = ref["tokens"].reshape(2, 3, 3), ref["labels"]
  raster = np.asarray(model.apply(variables, tokens, labels)).reshape(2, 9, -1)
  np.testing.assert_allclose(raster, ref["raster_logits"], atol=1e-4, rtol=0)
  orders = ref["orders"]
  ordered = np.asarray(model.apply(variables, tokens, labels, orders=orders)).reshape(2, 9, -1)
  # The authors' position j predicts token orders[j]; jaxtok's logits are in grid order.
  want = np.take_along_axis(ordered, orders[..., None], axis=1)
  np.testing.assert_allclose(want, ref["ordered_logits"], atol=1e-4, rtol=0)
  assert np.abs(ref["ordered_logits"] - ref["raster_logits"]).max() > 0.1  # orders matter


def test_greedy_samples_are_identical(converted):
  gen, ref = converted
  labels = ref["labels"]
  plain = gen.sample(0, labels, temperature=0.0)
  np.testing.assert_array_equal(np.asarray(plain).reshape(2, 9), ref["greedy_cfg1"])
  guided = gen.sample(0, labels, temperature=0.0, cfg_scale=3.0, cfg_power=2.0)
  np.testing.assert_array_equal(np.asarray(guided).reshape(2, 9), ref["greedy_cfg3"])
  assert not np.array_equal(ref["greedy_cfg1"], ref["greedy_cfg3"])


def test_the_checkpoint_is_fully_accounted_for(tmp_path):
  state = dict(weights.read_object(os.path.join(FIXTURES, "rar.pth")))
  state["extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(ValueError, match="1 unused"):
    convert.sources()["rar-b"].convert_state(state, token_shape=[3, 3])
  del state["extra.weight"], state["lm_head.bias"]
  with pytest.raises(ValueError, match="1 missing: lm_head.bias"):
    convert.sources()["rar-b"].convert_state(state, token_shape=[3, 3])


def test_full_size_shapes_give_the_presets():
  for name, (width, depth, mlp) in {"RAR-B": (768, 24, 3072), "RAR-XL": (1280, 32, 5120)}.items():
    shapes = {"embeddings.weight": ((2026, width), "f4"),
              "lm_head.weight": ((1024, width), "f4"),
              "blocks.0.attn.q_norm.weight": ((width // 16,), "f4"),
              "blocks.0.mlp.fc1.weight": ((mlp, width), "f4"),
              "pos_embed": ((1, 1280, width), "f4"), "timesteps_embeddings": ((1, 356, width), "f4")}
    shapes.update({f"blocks.{i}.norm1.weight": ((width,), "f4") for i in range(depth)})
    fields = rar.rar_fields(common.Weights(common.abstract(shapes)), None, (16, 16))
    want = {k: getattr(RAR.from_preset(name), k) for k in fields}
    want["token_shape"] = list(want["token_shape"])
    assert fields == want
