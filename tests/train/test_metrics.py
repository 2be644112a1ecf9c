"""MetricWriter: JSONL rows, TensorBoard scalars and images read back, resume truncation."""

import io
import json
import os
import struct

import numpy as np
from PIL import Image
from tensorboardX.proto.event_pb2 import Event

from jaxtok.train import metrics


def _events(path) -> list[Event]:
  """The `Event`s of a TFRecord file: u64 length, u32 CRC, data, u32 CRC per record."""
  data, out, i = open(path, "rb").read(), [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    out.append(Event.FromString(data[i + 12:i + 12 + n]))
    i += 16 + n
  return out


def test_metric_writer_writes_jsonl_events_and_truncates_on_resume(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), total_steps=4, progress=False)
  for step in (1, 2, 3):
    writer.write(step, {"loss": 1.0 / step, "bad": float("nan"), "n": np.int32(step)})
  writer.write(3, {"psnr": 20.0}, split="eval")
  writer.image(3, "eval/reconstructions", np.zeros((4, 8, 3), np.uint8))
  writer.close()
  rows = metrics.read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
  assert rows[0] == {"step": 1, "split": "train", "loss": 1.0, "bad": None, "n": 1.0}
  assert rows[-1] == {"step": 3, "split": "eval", "psnr": 20.0}
  json.dumps(rows, allow_nan=False)  # strict JSON: no NaN literals

  (events_file,) = os.listdir(tmp_path / "tensorboard")
  events = _events(tmp_path / "tensorboard" / events_file)
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value
             if v.HasField("simple_value")]
  expected = [(s, t, x) for s in (1, 2, 3) for t, x in (("train/loss", 1.0 / s),
                                                          ("train/n", float(s)))]
  expected.append((3, "eval/psnr", 20.0))  # NaN is not plotted
  assert [(s, t) for s, t, _ in scalars] == [(s, t) for s, t, _ in expected]
  np.testing.assert_allclose([x for *_, x in scalars], [x for *_, x in expected], rtol=1e-6)
  images = [(e.step, v) for e in events for v in e.summary.value if v.HasField("image")]
  assert len(images) == 1
  step, value = images[0]
  assert (step, value.tag, value.image.height, value.image.width) == (
      3, "eval/reconstructions", 4, 8)
  assert Image.open(io.BytesIO(value.image.encoded_image_string)).size == (8, 4)

  # A run resumed from step 2 forgets what was logged after its checkpoint.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "spl')  # a line cut short by a crash
  metrics.MetricWriter(str(tmp_path), total_steps=4, initial_step=2, progress=False,
                       tensorboard=False).close()
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_recon_grid_writes_png_and_tensorboard_image(tmp_path):
  writer = metrics.MetricWriter(str(tmp_path), total_steps=1, progress=False)
  originals = np.zeros((2, 4, 4, 3), np.uint8)
  writer.recon_grid(5, originals, originals + 255)
  writer.close()
  grid = np.asarray(Image.open(tmp_path / "recon" / "step_0000005.png"))
  assert grid.shape == (2 * 4 + 2, 2 * 4 + 2, 3)
  assert grid[0, 0].tolist() == [0, 0, 0] and grid[-1, 0].tolist() == [255, 255, 255]
  (events_file,) = os.listdir(tmp_path / "tensorboard")
  (image,) = [v.image for e in _events(tmp_path / "tensorboard" / events_file)
              for v in e.summary.value if v.HasField("image")]
  assert (image.height, image.width) == grid.shape[:2]
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))),
                                grid)
