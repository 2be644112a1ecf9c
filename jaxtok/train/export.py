"""`jaxtok export`: a training run's model (EMA params by default, the quantizer state, the
config) written as an export directory that `jaxtok.load` reads (see jaxtok/inference.py)."""

import os

import orbax.checkpoint as ocp

from jaxtok import inference
from jaxtok.train import checkpoint as checkpoint_lib


def restore_model(workdir: str, *, step: int | None = None, use_ema: bool = True
                  ) -> tuple[dict, dict, int]:
  """(config, variables, step) of the model in `workdir`'s checkpoint at `step` (newest)."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint under {directory}: train first")
  ckpt = checkpoint_lib.Checkpointer(directory, max_to_keep=None)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {ckpt.directory}: train first")
    config = ckpt.saved_config(step)
    if config is None:
      raise ValueError(f"checkpoint step {step} in {ckpt.directory} holds no config")
    state = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore()))["state"]
  finally:
    ckpt.close()
  variables = {"params": state["ema_params" if use_ema else "params"]}
  if state.get("quantizer_state"):
    variables["quantizer_state"] = state["quantizer_state"]
  return config, variables, step


def export(workdir: str, out: str, *, step: int | None = None, use_ema: bool = True) -> str:
  """Writes the model of `workdir`'s checkpoint at `step` (default newest) to `out`."""
  config, variables, step = restore_model(workdir, step=step, use_ema=use_ema)
  origin = {"workdir": os.path.abspath(workdir), "step": step, "ema": use_ema}
  return inference.save(out, {**config, "exported_from": origin}, variables)
