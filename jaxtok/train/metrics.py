"""Where training metrics go: a console progress bar, a JSONL file and TensorBoard event files.

`metrics.jsonl` holds one JSON object per line: {"step": s, "split": "train" | "eval", name:
value, ...}; non-finite values are written as null. A run resumed from step s first drops the
lines past s, so the file reads as one uninterrupted run.

TensorBoard events are written by `tensorboardX`: a maintained writer that needs neither
TensorFlow nor tensorboard, in place of a hand-written TFRecord/protobuf encoder.
"""

import json
import math
import os
import sys

import numpy as np
from PIL import Image
from tensorboardX import SummaryWriter
from tqdm import tqdm

from jaxtok.data import images

# ------------------------------------------------------------------ JSONL


def _json_value(value):
  value = float(value) if np.ndim(value) == 0 else value
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def truncate_jsonl(path: str, after_step: int) -> None:
  """Drops the lines of `path` whose "step" exceeds `after_step` (resume from that step)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      if json.loads(line).get("step", 0) <= after_step:
        kept.append(line if line.endswith("\n") else line + "\n")
    except json.JSONDecodeError:  # a line cut short by a crash
      continue
  with open(path, "w") as f:
    f.writelines(kept)


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------ the writer the trainer uses


class MetricWriter:
  """Console progress bar + `metrics.jsonl` + TensorBoard events under `workdir`.

  Only the writing process (process 0) should pass enabled=True; the others get a no-op. The
  bar appears at `start_progress` (after the first, compiling, step: its clock and ETA then
  measure training alone) or at the first `advance`.
  """

  PROGRESS_KEYS = ("loss", "psnr", "usage")

  def __init__(self, workdir: str, *, total_steps: int, initial_step: int = 0,
               enabled: bool = True, tensorboard: bool = True, progress: bool = True,
               truncate: bool = True):
    self.enabled = enabled
    self.workdir = workdir
    self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
    self.events = None
    self.bar = None
    self.total_steps, self.step = total_steps, initial_step
    self.progress = progress and enabled
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if truncate:  # a resumed run: forget what was logged after its checkpoint
      truncate_jsonl(self.jsonl_path, initial_step)
    if tensorboard:
      self.events = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, values: dict, *, split: str = "train") -> None:
    """One JSONL line, TensorBoard scalars "<split>/<name>", and the progress bar's summary."""
    if not self.enabled:
      return
    row = {"step": int(step), "split": split, **{k: _json_value(v) for k, v in values.items()}}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.events is not None:
      for k, v in values.items():  # TensorBoard plots finite scalars only
        if np.ndim(v) == 0 and math.isfinite(float(v)):
          self.events.add_scalar(f"{split}/{k}", float(v), global_step=int(step))
      self.events.flush()
    if self.bar is not None and split == "train":
      self.bar.set_postfix({k: f"{float(values[k]):.4g}" for k in self.PROGRESS_KEYS
                            if k in values}, refresh=False)
    elif split != "train":
      self.print(f"step {step} {split}: " + ", ".join(
          f"{k}={float(v):.4g}" for k, v in values.items() if np.ndim(v) == 0))

  def image(self, step: int, tag: str, image_HWC: np.ndarray) -> None:
    if self.enabled and self.events is not None:
      self.events.add_image(tag, np.asarray(image_HWC, np.uint8), global_step=int(step),
                            dataformats="HWC")
      self.events.flush()

  def recon_grid(self, step: int, originals_BHWC: np.ndarray, recon_BHWC: np.ndarray) -> None:
    """Writes recon/step_<step>.png (originals over reconstructions) and its TB image."""
    if not self.enabled:
      return
    grid = images.comparison_grid(originals_BHWC, recon_BHWC)
    os.makedirs(os.path.join(self.workdir, "recon"), exist_ok=True)
    Image.fromarray(grid).save(os.path.join(self.workdir, "recon", f"step_{step:07d}.png"))
    self.image(step, "eval/reconstructions", grid)

  def start_progress(self, step: int) -> None:
    """Shows the progress bar at `step`, its clock starting now."""
    self.step = step
    if self.progress and self.bar is None:
      self.bar = tqdm(total=self.total_steps, initial=step, dynamic_ncols=True,
                      file=sys.stderr, desc="train", smoothing=0.1)

  def advance(self, steps: int = 1) -> None:
    if self.bar is None:
      self.start_progress(self.step)
    self.step += steps
    if self.bar is not None:
      self.bar.update(steps)

  def print(self, message: str) -> None:
    if not self.enabled:
      return
    if self.bar is not None:
      self.bar.write(message, file=sys.stderr)
    else:
      print(message, file=sys.stderr)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.events is not None:
      self.events.close()
