"""Export a trained tokenizer (params + config, nothing else) and load it back for library use.

An export directory holds `config.json` (the run's config) and `variables/` (an Orbax
checkpoint of {"params", "quantizer_state"}: the EMA params by default, and the EMA codebooks),
small enough to ship and enough to encode and decode.
"""

import json
import os
from typing import Any, NamedTuple

import jax
import ml_collections
import orbax.checkpoint as ocp

from jaxtok import quantizers
from jaxtok.models.tokenizers.tokenizer import Tokenizer
from jaxtok.train import checkpoint as checkpoint_lib
from jaxtok.train import state as state_lib


class Loaded(NamedTuple):
  """A ready tokenizer: `model.apply(variables, images, method="encode")` and so on."""

  model: Tokenizer
  variables: dict[str, Any]  # {"params": ..., "quantizer_state": ...}
  config: ml_collections.ConfigDict  # the config of the run it came from

  def encode(self, images, **kwargs):
    return self.model.apply(self.variables, images, method="encode", **kwargs)

  def decode(self, indices, **kwargs):
    return self.model.apply(self.variables, indices, method="decode", **kwargs)


def export(workdir: str, out: str, *, step: int | None = None, use_ema: bool = True) -> str:
  """Writes the tokenizer of `workdir`'s checkpoint at `step` (default newest) to `out`."""
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=None)
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
  variables = {"params": state["ema_params" if use_ema else "params"],
               "quantizer_state": state.get("quantizer_state") or {}}
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(out, "variables"), variables, force=True)
  checkpointer.wait_until_finished()
  with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({**config, "exported_from": {"workdir": os.path.abspath(workdir), "step": step,
                                           "ema": use_ema}}, f, indent=2)
  return out


def load(path: str, *, dtype: str = "float32") -> Loaded:
  """The tokenizer exported to `path` (by `export` / `jaxtok export`), ready to use."""
  config_path = os.path.join(path, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{path} is not a jaxtok export: no config.json (make one with "
                            f"`jaxtok export --workdir RUN --out {path}`)")
  with open(config_path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  model = state_lib.build_tokenizer(
      config.model, quantizers.build(state_lib.plain(config.quantizer)),
      state_lib.DTYPES[dtype])
  variables = ocp.StandardCheckpointer().restore(os.path.join(os.path.abspath(path), "variables"))
  variables = jax.tree.map(jax.numpy.asarray, dict(variables))
  if not variables.get("quantizer_state"):
    variables.pop("quantizer_state", None)
  return Loaded(model, variables, config)
