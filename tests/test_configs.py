"""Every experiment config in jaxtok/configs/ loads (as ml_collections config_flags loads it,
with overrides), documents its run command and expected result, names its trainer, has exactly
the fields that trainer reads (those of the matching demo config, configs/demo/<trainer>.py),
and builds its models (shapes only)."""

import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import pytest
from absl import flags
from flax import traverse_util
from ml_collections import config_flags

from jaxtok import build, train
from jaxtok.config import packaged_configs
from jaxtok.train import state as state_lib
from jaxtok.train import tokenizer_trainer

ROOT = str(packaged_configs())
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "**", "*.py"), recursive=True)
                 if not p.endswith("__init__.py"))
DEMO = os.path.join(ROOT, "demo")
# (path, arg) of every config variant; the demos also have the "tiny" ones the tests train.
VARIANTS = [(p, None) for p in CONFIGS] + [
    (os.path.join(DEMO, name), "tiny") for name in ("tokenizer.py", "ar.py", "maskgit.py")] + [
    (os.path.join(DEMO, "patch_tokenizer.py"), arg) for arg in ("fsq", "lfq", "rvq,tiny")]


def _load(path: str):
  spec = importlib.util.spec_from_file_location(f"config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _section_keys(config) -> dict[str, set]:
  return {name: set(config[name].keys()) for name in config.keys()
          if name not in ("model", "quantizer", "discriminator") and hasattr(config[name], "keys")}


def test_configs_exist():
  names = {os.path.relpath(p, ROOT) for p in CONFIGS}
  assert {"demo/tokenizer.py", "demo/ar.py", "demo/maskgit.py", "demo/patch_tokenizer.py",
          "tokenizers/llamagen_vq16.py", "generators/llamagen_gpt_b.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_documents_its_run_and_loads_with_overrides(path):
  module = _load(path)
  doc = module.__doc__ or ""
  assert "Run" in doc and "Expected" in doc, f"{path}: docstring needs the run command and " \
      "the expected result"
  argv = ["prog", f"--config={path}", "--config.train.steps=7", "--config.seed=3"]
  values = flags.FlagValues()  # as a CLI built on config_flags parses its command line
  config_flags.DEFINE_config_file("config", default=None, flag_values=values, sys_argv=argv)
  values(argv)
  assert values.config.train.steps == 7 and values.config.seed == 3


def _reference_keys(trainer: str) -> dict[str, set]:
  """Section -> field names of the demo config of `trainer`: every config of that trainer
  must have exactly these (the trainers read every field; no hidden defaults)."""
  config = _load(os.path.join(DEMO, f"{trainer}.py")).get_config()
  return {**{k: set() for k in config.keys()}, **_section_keys(config)}


@pytest.mark.parametrize("path,arg", VARIANTS, ids=lambda v: str(v))
def test_config_has_every_trainer_field_and_builds(path, arg):
  config = _load(path).get_config(arg)
  trainer = config.trainer
  assert trainer in train.TRAINERS, f"{path}: unknown trainer {trainer!r}"
  reference = _reference_keys(trainer)
  assert set(config.keys()) == set(reference), set(config.keys()) ^ set(reference)
  for section, keys in _section_keys(config).items():
    assert keys == reference[section], f"{section}: {keys ^ reference[section]}"
  if trainer != "tokenizer":
    model = build.model(config)
    inputs = (model.example_inputs(1) if hasattr(model, "example_inputs")  # VAR
              else jnp.zeros((1, *model.token_shape), jnp.int32))
    jax.eval_shape(model.init, state_lib.make_key(0), inputs)
    return
  parts = tokenizer_trainer.build_parts(config)
  size = config.data.image_size
  variables = jax.eval_shape(parts.tokenizer.init, state_lib.make_key(0),
                             jnp.zeros((1, size, size, 3)))
  flat = traverse_util.flatten_dict(variables["params"])
  if config.loss.adaptive_weight:  # the layer the adaptive weight reads must exist
    assert tuple(config.loss.adaptive_weight_layer.split("/")) in flat
  if parts.discriminator is not None:
    jax.eval_shape(parts.discriminator.init, state_lib.make_key(1),
                   jnp.zeros((1, size, size, 3)))


def test_llamagen_vq16_is_the_published_model():
  config = _load(os.path.join(ROOT, "tokenizers", "llamagen_vq16.py")).get_config()
  parts = tokenizer_trainer.build_parts(config)
  variables = jax.eval_shape(parts.tokenizer.init, state_lib.make_key(0),
                             jnp.zeros((1, 256, 256, 3)))
  count = sum(x.size for x in jax.tree.leaves(variables["params"]))
  assert count == 71_883_403  # LlamaGen's VQ-16, codebook included
  assert parts.tokenizer.token_shape((256, 256)) == (16, 16)
  assert parts.tokenizer.quantizer.codebook_size == 16384
  assert (config.train.batch_size, config.optimizer.lr, config.optimizer.b2) == (128, 1e-4, 0.95)
  assert (config.loss.disc_start, config.loss.disc_weight) == (20_000, 0.5)
