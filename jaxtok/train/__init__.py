"""Training: the one resumable loop (loop.py), one trainer file per objective, and the state,
sharding, checkpoints, guards, metric writers and exports around them."""

import importlib
import os

# config.trainer -> the module whose train(config, workdir) runs it.
TRAINERS = {"tokenizer": "tokenizer_trainer", "ar": "ar_trainer", "maskgit": "maskgit_trainer",
            "rar": "rar_trainer", "var": "var_trainer",
            "mar": "mar_trainer"}


def trainer(config):
  """The trainer module that `config.trainer` names."""
  name = config.get("trainer")
  if name not in TRAINERS:
    raise ValueError(f"config.trainer must be one of {sorted(TRAINERS)}; got {name!r}")
  return importlib.import_module(f"jaxtok.train.{TRAINERS[name]}")


def train(config, workdir: str, **kwargs):
  """Trains (or resumes) the run `config` describes in `workdir` with the trainer it names."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):  # said before any model is built
    raise NotADirectoryError(f"workdir {os.path.abspath(workdir)} is a file, not a directory")
  return trainer(config).train(config, workdir, **kwargs)


def evaluate(config, workdir: str, **kwargs):
  """Evaluates the newest tokenizer checkpoint in `workdir` with the run's saved config, or
  with `config` when not None (see tokenizer_trainer.evaluate)."""
  from jaxtok.train import tokenizer_trainer  # pylint: disable=g-import-not-at-top

  return tokenizer_trainer.evaluate(config, workdir, **kwargs)


__all__ = ["TRAINERS", "evaluate", "train", "trainer"]
