"""Benchmark of nearest_code: every implementation against the materializing XLA baseline.

    python tools/bench/nearest_code.py                       # all shapes, f32 and bf16
    python tools/bench/nearest_code.py --out benchmarks/results/nearest_code_h100.md
    python tools/bench/nearest_code.py --sweep               # also try other Pallas blocks

For each (N, K, D) and dtype it prints a markdown table row per implementation: the median of
--repeats host-timed runs around `block_until_ready` after --warmup runs, pairs/s (N·K / time),
the speed-up over impl="reference" (argmin of the materialized N×K matrix) and the fraction of
rows whose index equals the baseline's. On CPU the shapes shrink (N and K divided by
--cpu-shrink, 64 by default) and the Pallas kernels run only with --interpret (slowly, in the
Pallas interpreter: a check that the script works, not a measurement). `--out` writes the table
with the device name and JAX version to a .md or .json file (for benchmarks/results/).
"""

import argparse
import dataclasses
import datetime
import functools
import json
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from jaxtok.kernels.nearest_code import (blocks, measured, mosaic_gpu, nearest_code,  # noqa: E402
                                         pallas_gpu, pallas_tpu)

SHAPES = ((65536, 16384, 8), (65536, 16384, 32), (65536, 4096, 256), (16384, 65536, 16),
          (4096, 262144, 16))
DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
BASELINE = "reference"
# --sweep: GPU candidates (block_n, block_k, num_warps, num_stages), tried with the chooser's
# k_splits and block_d; TPU candidates (block_n, block_k) with the chooser's k_splits.
GPU_SWEEP = ((64, 64, 4, 2), (128, 64, 4, 2), (128, 128, 8, 2), (64, 128, 4, 3), (256, 64, 8, 2))
TPU_SWEEP = ((256, 256), (512, 512), (1024, 512), (512, 1024))


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  fn: object  # jitted fn(x, e) -> (indices, dist)
  kernel_backend: str | None = None  # "gpu"/"tpu" for a Pallas kernel, to report its blocks
  fixed_blocks: blocks.BlockSizes | None = None  # None: the kernel's per-shape chooser

  def blocks_text(self, n, k, d, dtype) -> str:
    if self.kernel_backend is None:
      return ""
    if self.kernel_backend == "mosaic":
      b = mosaic_gpu.choose(n, k)
      return f"{b.block_n}x{b.block_k} S={b.k_splits}"
    b = self.fixed_blocks or blocks.choose(n, k, d, dtype, self.kernel_backend)
    text = f"{b.block_n}x{b.block_k} S={b.k_splits}"
    if self.kernel_backend == "gpu":
      text += f" bd={b.block_d} w={b.num_warps} st={b.num_stages}"
    return text


def implementations(backend: str, metric: str, interpret: bool) -> list[Variant]:
  """The baseline first, then what else runs on `backend`."""
  def api(impl):
    return jax.jit(functools.partial(nearest_code, metric=metric, impl=impl))

  out = [Variant(BASELINE, api(BASELINE)), Variant("xla", api("xla"))]
  if backend in ("gpu", "tpu"):
    out.append(Variant(f"pallas_{backend}", api(f"pallas_{backend}"), backend))
  if backend == "gpu":
    out.append(Variant("mosaic_gpu", api("mosaic_gpu"), "mosaic"))
  elif backend != "tpu" and interpret:
    for name, kb, fn in (("pallas_gpu", "gpu", pallas_gpu.nearest_code_pallas_gpu),
                         ("mosaic_gpu", "mosaic", mosaic_gpu.nearest_code_mosaic_gpu),
                         ("pallas_tpu", "tpu", pallas_tpu.nearest_code_pallas_tpu)):
      out.append(Variant(f"{name} (interpret)",
                         jax.jit(functools.partial(fn, metric=metric, interpret=True)), kb))
  return out


def sweep_variants(backend: str, metric: str, n: int, k: int, d: int, dtype) -> list[Variant]:
  """Other Pallas block sizes to compare with the chooser's (--sweep)."""
  chosen = blocks.choose(n, k, d, dtype, backend)
  if backend == "gpu":
    candidates = [blocks.BlockSizes(block_n=bn, block_k=bk, k_splits=chosen.k_splits,
                                    block_d=chosen.block_d, num_warps=w, num_stages=st)
                  for bn, bk, w, st in GPU_SWEEP]
    fn = pallas_gpu.nearest_code_pallas_gpu
  elif backend == "tpu":
    candidates = [blocks.BlockSizes(block_n=bn, block_k=bk, k_splits=chosen.k_splits)
                  for bn, bk in TPU_SWEEP]
    fn = pallas_tpu.nearest_code_pallas_tpu
  else:
    return []
  return [Variant(f"pallas_{backend} (sweep)",
                  jax.jit(functools.partial(fn, metric=metric, blocks=b)), backend, b)
          for b in candidates if b != chosen]


def time_ms(fn, x, e, warmup: int, repeats: int) -> tuple[float, jax.Array]:
  for _ in range(warmup):
    out = jax.block_until_ready(fn(x, e))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(x, e))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times), out[0]


def run(args) -> list[dict]:
  backend = jax.default_backend()
  shrink = args.cpu_shrink if backend == "cpu" else 1
  variants = implementations(backend, args.metric, args.interpret)
  if args.impls:
    variants = [v for v in variants if v.name == BASELINE or v.name.split()[0] in args.impls]
  rows = []
  key = jax.random.key(0)
  for n, k, d in SHAPES:
    n, k = max(n // shrink, 1), max(k // shrink, 1)
    for dname in args.dtypes:
      dtype = DTYPES[dname]
      kx, ke = jax.random.split(jax.random.fold_in(key, n * k + d))
      x = jax.random.normal(kx, (n, d), jnp.float32).astype(dtype)
      e = jax.random.normal(ke, (k, d), jnp.float32).astype(dtype)
      todo = variants + (sweep_variants(backend, args.metric, n, k, d, dtype)
                         if args.sweep else [])
      base_ms = base_idx = None
      for v in todo:
        try:
          ms, idx = time_ms(v.fn, x, e, args.warmup, args.repeats)
        except Exception as err:  # one failing variant must not hide the others' figures
          print(f"{v.name} at N={n} K={k} D={d} {dname} failed: {type(err).__name__}: "
                f"{str(err)[:500]}", file=sys.stderr)
          continue
        if v.name == BASELINE:
          base_ms, base_idx = ms, idx
        row = {"N": n, "K": k, "D": d, "dtype": dname, "impl": v.name,
               "blocks": v.blocks_text(n, k, d, dtype), "time_ms": ms,
               "pairs_per_s": n * k / (ms / 1e3),
               "speedup": base_ms / ms if base_ms else None,
               "index_agreement": float(jnp.mean(idx == base_idx)) if base_ms else None}
        rows.append(row)
        print(format_row(row), flush=True)
  return rows


def winners(rows: list[dict], backend: str) -> dict[str, str]:
  """Per shape class (measured.shape_class), the implementation with the least total time
  over the shapes and dtypes where every candidate ran (sweeps and the baseline excluded)."""
  out = {}
  for cls in ("small_d", "large_d"):
    cases = [r for r in rows if measured.shape_class(r["D"]) == cls
             and r["impl"] != BASELINE and "(" not in r["impl"]]
    impls = {r["impl"] for r in cases}
    keys = [{(r["N"], r["K"], r["D"], r["dtype"]) for r in cases if r["impl"] == i}
            for i in impls]
    common = set.intersection(*keys) if keys else set()
    totals = {i: sum(r["time_ms"] for r in cases if r["impl"] == i
                     and (r["N"], r["K"], r["D"], r["dtype"]) in common) for i in impls}
    if common:
      out[cls] = min(sorted(totals), key=totals.get)
  return out


def write_winners(path: pathlib.Path, found: dict[str, str], backend: str, meta: dict):
  """Rewrites measured.py's WINNERS entry for `backend`, keeping the other backends'."""
  table = {**measured.WINNERS, backend: {**measured.WINNERS.get(backend, {}), **found}}
  note_start = f"# {backend}: measured on "
  text = "".join(line for line in path.read_text().splitlines(keepends=True)
                 if not line.startswith(note_start))
  start = text.index("WINNERS = {")
  end = text.index("\n}\n", start) + 3
  body = "".join(f"    {b!r}: {table[b]!r},\n" for b in sorted(table))
  note = f"{note_start}{meta['device']}, jax {meta['jax']}, {meta['date']}\n"
  path.write_text(text[:start] + note + "WINNERS = {\n" + body + "}\n" + text[end:])
  print(f"wrote {backend} winners {found} to {path}")


HEADER = ("| N, K, D | dtype | impl | blocks | time (ms) | pairs/s | vs reference "
          "| index agreement |\n|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
  vs = "n/a" if r["speedup"] is None else f"{r['speedup']:.2f}x"
  agree = "n/a" if r["index_agreement"] is None else f"{r['index_agreement']:.6f}"
  return (f"| {r['N']}, {r['K']}, {r['D']} | {r['dtype']} | {r['impl']} | {r['blocks']} "
          f"| {r['time_ms']:.3f} | {r['pairs_per_s']:.3g} | {vs} | {agree} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--metric", default="l2", choices=("l2", "cosine", "dot"))
  parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
  parser.add_argument("--impls", nargs="+", default=None,
                      help="subset to run besides the baseline (xla pallas_gpu pallas_tpu)")
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--cpu-shrink", type=int, default=64, help="N, K divisor on CPU")
  parser.add_argument("--interpret", action="store_true",
                      help="on CPU, also run the Pallas kernels in the interpreter (slow)")
  parser.add_argument("--sweep", action="store_true",
                      help="on GPU/TPU, also time a few other Pallas block sizes")
  parser.add_argument("--out", type=pathlib.Path, help="write the results to a .md or .json")
  parser.add_argument("--winners", type=pathlib.Path,
                      help="rewrite this measured.py's table for this backend (impl='auto')")
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  meta = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
          "date": datetime.date.today().isoformat(), "metric": args.metric,
          "timing": f"median of {args.repeats} host-timed runs around block_until_ready "
                    f"after {args.warmup} warm-up runs"}
  print(f"nearest_code benchmark on {meta['device']}, jax {meta['jax']}, metric "
        f"{args.metric}; {meta['timing']}")
  if device.platform == "cpu":
    print(f"CPU: N and K divided by {args.cpu_shrink}; Pallas only with --interpret")
  print(HEADER, flush=True)
  rows = run(args)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".json":
      args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    else:
      lines = ["# nearest_code benchmark", "",
               *(f"- {k}: {v}" for k, v in meta.items()),
               "- command: `python tools/bench/nearest_code.py "
               + " ".join(sys.argv[1:] if argv is None else argv) + "`", "", HEADER,
               *map(format_row, rows), ""]
      args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")
  if args.winners and device.platform in ("gpu", "tpu"):
    write_winners(args.winners, winners(rows, device.platform), device.platform, meta)


if __name__ == "__main__":
  main()
