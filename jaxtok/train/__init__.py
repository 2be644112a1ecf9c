"""Training: the one resumable loop (loop.py), one trainer file per objective, and the state,
sharding, checkpoints, guards, metric writers and exports around them."""

import importlib

# config.trainer -> the module whose train(config, workdir) runs it.
TRAINERS = {"tokenizer": "tokenizer_trainer", "ar": "ar_trainer", "maskgit": "maskgit_trainer"}


def trainer(config):
  """The trainer module that `config.trainer` names."""
  name = config.get("trainer")
  if name not in TRAINERS:
    raise ValueError(f"config.trainer must be one of {sorted(TRAINERS)}; got {name!r}")
  return importlib.import_module(f"jaxtok.train.{TRAINERS[name]}")


def train(config, workdir: str, **kwargs):
  """Trains (or resumes) the run `config` describes in `workdir` with the trainer it names."""
  return trainer(config).train(config, workdir, **kwargs)


def evaluate(config, workdir: str, **kwargs):
  """Evaluates the newest tokenizer checkpoint in `workdir` (see tokenizer_trainer.evaluate)."""
  if config.get("trainer") != "tokenizer":
    raise ValueError(f"evaluation on held-out images is for tokenizers (trainer='tokenizer'); "
                     f"got trainer={config.get('trainer')!r}: sample a generator with "
                     f"`jaxtok sample` instead")
  return trainer(config).evaluate(config, workdir, **kwargs)


__all__ = ["TRAINERS", "evaluate", "train", "trainer"]
