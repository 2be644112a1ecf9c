"""Where training metrics go: a console progress bar, a JSONL file and TensorBoard event files.

`metrics.jsonl` holds one JSON object per line: {"step": s, "split": "train" | "eval", name:
value, ...}; non-finite values are written as null. When a run resumes from step s, lines past
s (written after the checkpoint the run fell back to) are dropped first, so the file reads as
one uninterrupted run.

TensorBoard files are written by `EventFileWriter`, a small dependency-free writer of the
TFRecord-framed `Event` protos TensorBoard reads (scalars as `simple_value`, images as PNG):
no TensorFlow, tensorboard or protobuf package is needed to write them.
"""

import io
import json
import math
import os
import socket
import struct
import sys
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

# ------------------------------------------------------------------ TFRecord + Event encoding


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord framing uses."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, its masked CRC (all little-endian)."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
  out = bytearray()
  value &= (1 << 64) - 1
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:  # wire type 0
  return _varint(number << 3) + _varint(value)


def event_bytes(wall_time: float, step: int, *, file_version: str | None = None,
                values: list[bytes] = ()) -> bytes:
  """An `Event` proto: wall_time (1, double), step (2, int64), file_version (3) or a
  summary (5) of `Summary.Value`s (field 1)."""
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time) + _field_varint(2, step)
  if file_version is not None:
    out += _field_bytes(3, file_version.encode())
  if values:
    out += _field_bytes(5, b"".join(_field_bytes(1, v) for v in values))
  return out


def scalar_value(tag: str, value: float) -> bytes:
  """`Summary.Value` with tag (1) and simple_value (2, float)."""
  return _field_bytes(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def image_value(tag: str, image_HWC: np.ndarray) -> bytes:
  """`Summary.Value` with tag (1) and image (4): height, width, colorspace, PNG bytes."""
  image_HWC = np.asarray(image_HWC, np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(image_HWC).save(buffer, format="PNG")
  height, width, channels = image_HWC.shape
  image = (_field_varint(1, height) + _field_varint(2, width) + _field_varint(3, channels)
           + _field_bytes(4, buffer.getvalue()))
  return _field_bytes(1, tag.encode()) + _field_bytes(4, image)


class EventFileWriter:
  """Appends TensorBoard events to `<logdir>/events.out.tfevents.<time>.<host>.<pid>`."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "wb")
    self._write(event_bytes(time.time(), 0, file_version="brain.Event:2"))

  def _write(self, event: bytes) -> None:
    self._file.write(tfrecord(event))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    finite = [scalar_value(k, float(v)) for k, v in values.items() if math.isfinite(float(v))]
    if finite:
      self._write(event_bytes(time.time(), step, values=finite))

  def image(self, step: int, tag: str, image_HWC: np.ndarray) -> None:
    self._write(event_bytes(time.time(), step, values=[image_value(tag, image_HWC)]))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()


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


def image_grid(top_BHWC: np.ndarray, bottom_BHWC: np.ndarray, gap: int = 2) -> np.ndarray:
  """Two rows of uint8 images, `gap` white pixels apart: [2H + gap, B W + (B - 1) gap, C]."""
  n, h, w, c = top_BHWC.shape
  grid = np.full((2 * h + gap, n * w + (n - 1) * gap, c), 255, np.uint8)
  for i in range(n):
    grid[:h, i * (w + gap):i * (w + gap) + w] = top_BHWC[i]
    grid[h + gap:, i * (w + gap):i * (w + gap) + w] = bottom_BHWC[i]
  return grid


# ------------------------------------------------------------------ the writer the trainer uses


class MetricWriter:
  """Console progress bar + `metrics.jsonl` + TensorBoard events under `workdir`.

  Only the writing process (process 0) should pass enabled=True; the others get a no-op.
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
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if truncate:  # a resumed run: forget what was logged after its checkpoint
      truncate_jsonl(self.jsonl_path, initial_step)
    if tensorboard:
      self.events = EventFileWriter(os.path.join(workdir, "tensorboard"))
    if progress:
      self.bar = tqdm(total=total_steps, initial=initial_step, dynamic_ncols=True,
                      file=sys.stderr, desc="train", smoothing=0.1)

  def write(self, step: int, values: dict, *, split: str = "train") -> None:
    """One JSONL line, TensorBoard scalars "<split>/<name>", and the progress bar's summary."""
    if not self.enabled:
      return
    row = {"step": int(step), "split": split, **{k: _json_value(v) for k, v in values.items()}}
    with open(self.jsonl_path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self.events is not None:
      self.events.scalars(step, {f"{split}/{k}": v for k, v in values.items()
                                 if np.ndim(v) == 0})
      self.events.flush()
    if self.bar is not None and split == "train":
      self.bar.set_postfix({k: f"{float(values[k]):.4g}" for k in self.PROGRESS_KEYS
                            if k in values}, refresh=False)
    elif split != "train":
      self.print(f"step {step} {split}: " + ", ".join(
          f"{k}={float(v):.4g}" for k, v in values.items() if np.ndim(v) == 0))

  def image(self, step: int, tag: str, image_HWC: np.ndarray) -> None:
    if self.enabled and self.events is not None:
      self.events.image(step, tag, image_HWC)
      self.events.flush()

  def recon_grid(self, step: int, originals_BHWC: np.ndarray, recon_BHWC: np.ndarray) -> None:
    """Writes recon/step_<step>.png (originals over reconstructions) and its TB image."""
    if not self.enabled:
      return
    grid = image_grid(np.asarray(originals_BHWC), np.asarray(recon_BHWC))
    os.makedirs(os.path.join(self.workdir, "recon"), exist_ok=True)
    Image.fromarray(grid).save(os.path.join(self.workdir, "recon", f"step_{step:07d}.png"))
    self.image(step, "eval/reconstructions", grid)

  def advance(self, steps: int = 1) -> None:
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
