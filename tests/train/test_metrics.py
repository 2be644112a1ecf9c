"""Metric writers: TensorBoard records byte-identical to tensorboardX's, JSONL rows, resume
truncation."""

import json
import os
import struct

import numpy as np

from jaxtok.train import metrics

# tensorboardX 2.6.5: SummaryWriter.add_scalar("train/loss", 0.5, global_step=3,
# walltime=1234.5), the file's second record.
TENSORBOARDX_SCALAR_RECORD = bytes.fromhex(
    "200000000000000029eda9500900000000004a934010032a130a110a0a747261696e2f6c6f7373150000003f"
    "e2908b8d")


def test_crc32c_check_value():
  assert metrics.crc32c(b"123456789") == 0xE3069283  # the CRC-32C catalogue's check value


def test_scalar_record_matches_tensorboardx():
  record = metrics.tfrecord(metrics.event_bytes(
      1234.5, 3, values=[metrics.scalar_value("train/loss", 0.5)]))
  assert record == TENSORBOARDX_SCALAR_RECORD


def _records(path):
  data, out, i = open(path, "rb").read(), [], 0
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == metrics.masked_crc32c(data[i:i + 8])
    body = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == metrics.masked_crc32c(body)
    out.append(body)
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
  (events_file,) = os.listdir(tmp_path / "tensorboard")
  records = _records(tmp_path / "tensorboard" / events_file)
  assert b"brain.Event:2" in records[0] and len(records) == 1 + 3 + 1 + 1
  assert b"train/loss" in records[1] and b"train/bad" not in records[1]  # NaN not plotted
  assert b"\x89PNG" in records[-1]
  # A run resumed from step 2 forgets what was logged after its checkpoint.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "spl')  # a line cut short by a crash
  metrics.MetricWriter(str(tmp_path), total_steps=4, initial_step=2, progress=False,
                       tensorboard=False).close()
  assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
  json.dumps(rows)  # strict JSON: no NaN literals
