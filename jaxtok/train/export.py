"""`jaxtok export`: a training run's model (EMA params by default, the quantizer state, the
config) written as an export directory that `jaxtok.load` reads (see jaxtok/inference.py).

Exporting only reads the workdir (read-only: it may train meanwhile), so it takes no lock.
"""

import json
import os

from jaxtok import inference
from jaxtok.data import tokens as token_data
from jaxtok.train import loop


def restore_model(workdir: str, *, step: int | None = None, use_ema: bool = True
                  ) -> tuple[dict, dict, int]:
  """(config, variables, step) of the model in `workdir`'s checkpoint at `step` (default: the
  newest intact one)."""
  ckpt = loop.reader(workdir)

  def restore(s: int):
    config = ckpt.saved_config(s)
    if config is None:
      raise ValueError(f"checkpoint step {s} in {ckpt.directory} holds no config")
    return config, ckpt.restore_raw(s)

  try:
    (config, state), step = ckpt.restore_newest(restore, step=step)
  finally:
    ckpt.close()
  variables = {"params": state["ema_params" if use_ema else "params"]}
  if state.get("quantizer_state"):
    variables["quantizer_state"] = state["quantizer_state"]
  tokenizer = trained_on_tokenizer(config)
  return ({**config, "tokenizer": tokenizer} if tokenizer else config), variables, step


def trained_on_tokenizer(config: dict) -> dict | None:
  """The config of the tokenizer whose tokens a generator run trained on (its token
  directory's metadata), so that `jaxtok sample` can refuse another tokenizer; None for
  tokenizer runs or when the token directory is gone."""
  path = os.path.join(str(config.get("data", {}).get("path") or ""), token_data.METADATA)
  if config.get("trainer") == "tokenizer" or not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f).get("tokenizer_config")


def check_out(workdir: str, out: str) -> None:
  """Refuses an `out` that would write into the run itself: the workdir or its checkpoints."""
  workdir, out = os.path.realpath(workdir), os.path.realpath(out)
  checkpoints = os.path.join(workdir, "checkpoints")
  if out == workdir or out == checkpoints or out.startswith(checkpoints + os.sep):
    raise ValueError(f"--out {out} would write into the workdir {workdir} itself; choose a "
                     f"directory outside it or beside its checkpoints, e.g. {workdir}/export")
  if os.path.exists(out) and not os.path.isdir(out):
    raise NotADirectoryError(f"--out {out} is a file, not a directory")


def export(workdir: str, out: str, *, step: int | None = None, use_ema: bool = True) -> str:
  """Writes the model of `workdir`'s checkpoint at `step` (default newest) to `out`."""
  check_out(workdir, out)
  config, variables, step = restore_model(workdir, step=step, use_ema=use_ema)
  origin = {"workdir": os.path.abspath(workdir), "step": step, "ema": use_ema}
  return inference.save(out, {**config, "exported_from": origin}, variables)
