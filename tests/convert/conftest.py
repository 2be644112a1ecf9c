"""What every converter test asks of a released file's manifest (tests/fixtures/manifests/:
the names and shapes of its tensors, made from the authors' code on torch's meta device)."""

import json
import pathlib

import jax
import ml_collections
import numpy as np

from jaxtok import build, convert, inference
from jaxtok.convert import common


def convert_release(path) -> tuple[dict, dict, dict, object]:
  """Converts zero-memory stand-ins of every tensor of the released file `path` describes and
  requires: the source expects that file, every tensor is taken (convert_state), the variables
  have exactly the shapes of the model the config describes (eval_shape), the authors'
  parameter count, and nothing was materialised. Returns (manifest, config, variables, model)."""
  manifest = json.loads(pathlib.Path(path).read_text())
  source = convert.sources()[manifest["source"]]
  assert source.files == (manifest["file"],)
  config, variables = source.convert_state(common.abstract(manifest["tensors"]),
                                           manifest["file"])
  checked = ml_collections.ConfigDict(config)
  model = build.model(checked, "float32")
  inference.check_variables(model, variables, build.TRAINED_KINDS[checked.trainer], checked)
  leaves = jax.tree.leaves(variables["params"])
  assert sum(int(np.prod(v.shape)) for v in leaves) == manifest["parameters"]
  assert all(not any(v.strides) for v in leaves)  # zero-stride views throughout
  return manifest, config, variables, model
