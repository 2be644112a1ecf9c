"""Config files load with `get_config(arg)` and take checked `a.b=value` overrides."""

import pytest

from jaxtok.config import load_config

CONFIG = """
import ml_collections

def get_config(arg=None):
  c = ml_collections.ConfigDict()
  c.name = arg or "default"
  c.train = dict(steps=10, lr=0.1, shape=(1, 1, 1), note="x")
  return c
"""


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(CONFIG)
  return str(path)


def test_arg_and_typed_overrides(config_file):
  c = load_config(f"{config_file}:small", ["train.steps=3", "train.lr=1", "train.shape=(2, 4, 1)",
                                           "train.note=1e-3"])
  assert c.name == "small"
  assert c.train.steps == 3 and c.train.lr == 1.0 and isinstance(c.train.lr, float)
  assert c.train.shape == (2, 4, 1)
  assert c.train.note == "1e-3"  # a string field keeps the text


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "config has no field 'train.stepz'"),
    ("nope.x=1", "config has no field 'nope'"),
    ("train.steps", "overrides look like 'a.b=value'"),
    ("train.steps=many", "override 'train.steps=many'"),
])
def test_bad_overrides_name_the_field(config_file, override, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
    load_config(config_file, [override])


def test_missing_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="config must be an existing .py file"):
    load_config(str(tmp_path / "absent.py"))
