"""jaxtok.weights reads PyTorch (zip, legacy, TorchScript), safetensors and Flax msgpack files
without torch, bit for bit (fixtures: tools/fixtures/torch_files.py, made with torch 2.13)."""

import pathlib
import zipfile

import ml_dtypes
import numpy as np
import pytest
from flax import serialization

from jaxtok import weights

FIXTURES = pathlib.Path(__file__).parent.parent / "fixtures" / "weights"
REF = dict(np.load(FIXTURES / "ref.npz"))
TENSORS = {k: v for k, v in REF.items() if not k.startswith("script.")}


@pytest.mark.parametrize("name", ["zip.pt", "legacy.pt", "tensors.safetensors"])
def test_tensors_equal_torch(name):
  obj = weights.read_object(str(FIXTURES / name))
  tensors = obj["model"] if "model" in obj else obj
  assert set(tensors) == set(TENSORS)
  for key, want in TENSORS.items():
    got = tensors[key]
    assert got.shape == want.shape, key
    np.testing.assert_array_equal(got.astype(np.float32), want, err_msg=key)
  assert tensors["b"].dtype == ml_dtypes.bfloat16 and tensors["h"].dtype == np.float16
  assert tensors["i"].dtype == np.int64 and tensors["flag"].dtype == np.bool_


def test_other_objects_are_opaque_records_never_run():
  obj = weights.read_object(str(FIXTURES / "zip.pt"))
  assert obj["steps"] == 7
  args = obj["args"]
  assert isinstance(args, weights.torch_files.Opaque)
  assert args.qualname == "argparse.Namespace" and args.state == {"lr": 1e-4}
  assert weights.read(str(FIXTURES / "zip.pt")).keys() == {f"model.{k}" for k in TENSORS}


def test_torchscript_parameters_and_buffers():
  got = weights.read(str(FIXTURES / "script.pt"))
  want = {k[len("script."):]: v for k, v in REF.items() if k.startswith("script.")}
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key].astype(np.float32), want[key], err_msg=key)


def test_flax_msgpack(tmp_path):
  tree = {"params": {"dense": {"kernel": np.arange(6.0).reshape(2, 3)}}}
  path = tmp_path / "ckpt.msgpack"
  path.write_bytes(serialization.msgpack_serialize(tree))
  got = weights.read(str(path), sep="/")
  np.testing.assert_array_equal(got["params/dense/kernel"], tree["params"]["dense"]["kernel"])


def test_bad_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.pt"):
    weights.read(str(tmp_path / "nowhere.pt"))
  other = tmp_path / "weights.h5"
  other.write_bytes(b"x")
  with pytest.raises(ValueError, match=r"weights.h5.*unknown file type"):
    weights.read(str(other))
  not_torch = tmp_path / "notes.pt"
  with zipfile.ZipFile(not_torch, "w") as z:
    z.writestr("notes.txt", "hi")
  with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
    weights.read(str(not_torch))
  junk = tmp_path / "junk.pt"
  junk.write_bytes(b"\x80\x02K\x01.")  # a pickle, but no torch magic
  with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
    weights.read(str(junk))
