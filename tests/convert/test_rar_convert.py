"""RAR converter: the authors' tiny random RAR (tools/fixtures/rar.py) converts to logits
within 1e-4 in raster and random orders and identical greedy samples, with and without
guidance; every released size's manifest converts into its preset with the authors' count."""

import glob
import os

import numpy as np
import pytest

import jaxtok
from jaxtok import convert, weights
from tests.convert.conftest import convert_release

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "rar")
MANIFESTS = sorted(glob.glob(os.path.join(FIXTURES, "..", "manifests", "rar-*.json")))


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


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: os.path.basename(p)[:-5])
def test_every_release_converts_to_its_preset(path):
  _, config, _, _ = convert_release(path)
  assert set(config["model"]) == {"name", "preset"}  # the preset exactly