"""Training: state, sharding, checkpoints, guards, metric writers and the trainers."""


def train(config, workdir: str, **kwargs):
  """Trains the tokenizer `config` describes in `workdir` (see tokenizer_trainer.train)."""
  from jaxtok.train import tokenizer_trainer  # pylint: disable=g-import-not-at-top

  return tokenizer_trainer.train(config, workdir, **kwargs)


def evaluate(config, workdir: str, **kwargs):
  """Evaluates the newest checkpoint in `workdir` (see tokenizer_trainer.evaluate)."""
  from jaxtok.train import tokenizer_trainer  # pylint: disable=g-import-not-at-top

  return tokenizer_trainer.evaluate(config, workdir, **kwargs)


__all__ = ["evaluate", "train"]
