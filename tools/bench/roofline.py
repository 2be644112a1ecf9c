r"""Roofline of every benchmark program, from XLA's compiled cost and memory analyses: no
accelerator needed, nothing big allocated.

    python tools/bench/roofline.py                          # every program, full size
    python tools/bench/roofline.py --only gpt_decode sampler
    python tools/bench/roofline.py --out benchmarks/results/roofline.md --section after
    python tools/bench/roofline.py --tiny                   # small sizes: a check of the script

For each program (tools/bench/roofline_programs.py: nearest_code at the benchmark shapes, the
VQ-16 tokenizer iteration at batch 32/64/96, its L1 + VQ step, VQ-16 encode, the GPT-B train
step, one GPT-B decode step and the whole sampler at batch 64/256 with CFG 2) it lowers and
compiles the jitted function on abstract arguments and prints:

- XLA: FLOPs and bytes accessed from `compiled.cost_analysis()` (a loop body counted once by
  XLA is multiplied by its trip count here, see Program.loop_body), and the peak memory from
  `compiled.memory_analysis()`: argument + output - alias + temp;
- ideal: model FLOPs, the multiply-adds of every dot_general and convolution in the
  program's jaxpr (x 2; scan bodies x their length), and the bytes that must move (every
  argument read once, every output written once, every matmul/conv output written and read
  once; see Program);
- the time each implies on an H100 SXM (--peak-tflops 989 bf16 dense, --hbm-tbps 3.35):
  max(FLOPs / peak, bytes / bandwidth), and which bound it is.

A ratio above 1.5 of XLA's FLOPs or bytes over the ideal is flagged as waste. The ideal
FLOPs are those the program's own jaxpr asks for: work duplicated in the jaxpr itself (a
second backward pass, a rematerialization) is in both columns and must be found by reading
the program (the tokenizer step's second backward pass was found that way). On a CPU the
figures reflect the CPU backend's fusion decisions (each fusion's operands count as bytes
accessed, and the CPU fuses less than the GPU): they find waste in the program (copies,
f32 where bf16 was configured, recomputation), they are not GPU measurements.
"""

import argparse
import datetime
import math
import pathlib
import re
import sys
import time

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import roofline_programs as programs  # noqa: E402
from roofline_programs import Program  # noqa: E402

WASTE = 1.5  # XLA over ideal above this: look for the waste


# ------------------------------------------------------------------ ideal (model) cost

def _sub_jaxprs(value):
  """The jaxprs held by an equation parameter (duck-typed: jax.core's classes moved)."""
  if hasattr(value, "eqns"):  # Jaxpr
    return [value]
  if hasattr(value, "jaxpr") and hasattr(value, "consts"):  # ClosedJaxpr
    return [value.jaxpr]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _nbytes(aval) -> int:
  return math.prod(aval.shape) * programs.itemsize(aval.dtype)


def contraction_cost(jaxpr) -> tuple[float, float]:
  """(FLOPs, output bytes) of every dot_general and convolution, 2 FLOPs per multiply-add.

  Scan bodies count `length` times, a cond its most expensive branch, other nested jaxprs
  (pjit, custom_vjp, remat, while) once.
  """
  flops = out_bytes = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    out = eqn.outvars[0].aval if eqn.outvars else None
    if name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = 1
      for d in contract:
        k *= lhs[d]
      flops += 2.0 * k * math.prod(out.shape)
      out_bytes += _nbytes(out)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial)
      per_output = rhs[spec[1]]
      for d in spec[2:]:
        per_output *= rhs[d]
      # A gradient of a strided conv dilates its input with zeros: those products are no work.
      per_output /= math.prod(eqn.params.get("lhs_dilation") or (1,))
      flops += 2.0 * per_output * math.prod(out.shape)
      out_bytes += _nbytes(out)
    else:
      costs = [contraction_cost(j) for v in eqn.params.values() for j in _sub_jaxprs(v)]
      if not costs:
        continue
      if name == "cond":
        f, b = max(costs)
      else:
        f, b = sum(c[0] for c in costs), sum(c[1] for c in costs)
      times = eqn.params.get("length", 1) if name == "scan" else 1
      flops, out_bytes = flops + times * f, out_bytes + times * b
  return flops, out_bytes


def ideal_cost(p: Program) -> tuple[float, float]:
  """(model FLOPs, bytes that must move) of a program; see Program."""
  closed = jax.make_jaxpr(p.fn)(*p.args)
  flops, activations = contraction_cost(closed.jaxpr)
  if p.ideal_bytes_of is not None:
    other, times = p.ideal_bytes_of
    return flops, times * ideal_cost(other)[1]
  written = (sum(_nbytes(a) for a in closed.out_avals) if p.written_bytes is None
             else p.written_bytes)
  moved = programs.tree_bytes(p.args) + written + (2 * activations if p.activations else 0)
  return flops, moved


# ------------------------------------------------------------------ XLA's cost

def _cost_dict(compiled) -> dict:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device
    cost = cost[0] if cost else {}
  return cost or {}


def peak_bytes(compiled) -> int | None:
  m = compiled.memory_analysis()
  if isinstance(m, (list, tuple)):
    m = m[0] if m else None
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes)


def compiled_cost(p: Program) -> tuple[float, float, int | None]:
  """(FLOPs, bytes accessed, peak bytes) of the compiled program, loop bodies x trips."""
  compiled = p.fn.lower(*p.args).compile()
  cost = _cost_dict(compiled)
  flops, moved = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
  if p.loop_body is not None and p.loop_trips > 1:
    body_flops, body_bytes, _ = compiled_cost(p.loop_body)
    flops += (p.loop_trips - 1) * body_flops
    moved += (p.loop_trips - 1) * body_bytes
  return flops, moved, peak_bytes(compiled)


# ------------------------------------------------------------------ table

HEADER = ("| program | size | GFLOP XLA | GFLOP ideal | × | GB moved XLA | GB ideal | × "
          "| peak mem (GB) | H100 ms, XLA figures | H100 ms, ideal | verdict |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def h100_ms(flops: float, moved: float, args) -> tuple[float, str]:
  compute, memory = flops / (args.peak_tflops * 1e12), moved / (args.hbm_tbps * 1e12)
  return 1e3 * max(compute, memory), "compute" if compute >= memory else "memory"


def analyse(p: Program, args) -> dict:
  t0 = time.perf_counter()
  ideal_flops, ideal_bytes = ideal_cost(p)
  flops, moved, peak = compiled_cost(p)
  xla_ms, _ = h100_ms(flops, moved, args)
  ideal_ms, bound = h100_ms(ideal_flops, ideal_bytes, args)
  ratio_f = flops / ideal_flops if ideal_flops else float("nan")
  ratio_b = moved / ideal_bytes if ideal_bytes else float("nan")
  waste = [f"{what} {r:.1f}×" for what, r in (("FLOPs", ratio_f), ("bytes", ratio_b))
           if r > WASTE]
  return {"program": p.name, "size": p.size, "flops": flops, "ideal_flops": ideal_flops,
          "bytes": moved, "ideal_bytes": ideal_bytes, "peak_bytes": peak,
          "xla_ms": xla_ms, "ideal_ms": ideal_ms, "bound": bound,
          "verdict": ("waste: " + ", ".join(waste)) if waste else "ok",
          "seconds": time.perf_counter() - t0}


def format_row(r: dict) -> str:
  peak = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 1e9:.2f}"
  return (f"| {r['program']} | {r['size']} | {r['flops'] / 1e9:.1f} "
          f"| {r['ideal_flops'] / 1e9:.1f} | {r['flops'] / max(r['ideal_flops'], 1):.2f} "
          f"| {r['bytes'] / 1e9:.3f} | {r['ideal_bytes'] / 1e9:.3f} "
          f"| {r['bytes'] / max(r['ideal_bytes'], 1):.2f} | {peak} | {r['xla_ms']:.3f} "
          f"| {r['ideal_ms']:.3f} ({r['bound']}) | {r['verdict']} |")


def write_section(path: pathlib.Path, section: str, body: str) -> None:
  """Writes `## section` into the markdown file, replacing a section of that name."""
  text = path.read_text() if path.exists() else "# Roofline of jaxtok's benchmark programs\n"
  block = f"## {section}\n\n{body.rstrip()}\n"
  pattern = re.compile(rf"^## {re.escape(section)}\n.*?(?=^## |\Z)", re.S | re.M)
  text = pattern.sub(lambda _: block + "\n", text) if pattern.search(text) else (
      text.rstrip() + "\n\n" + block)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", nargs="+", choices=programs.GROUPS, default=programs.GROUPS)
  parser.add_argument("--tiny", action="store_true", help="small sizes (a check of the script)")
  parser.add_argument("--peak-tflops", type=float, default=989.0)
  parser.add_argument("--hbm-tbps", type=float, default=3.35)
  parser.add_argument("--out", type=pathlib.Path, help="markdown file to write a section of")
  parser.add_argument("--section", default="results", help="section title in --out")
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  meta = [f"- compiled for: {device.platform} ({device.device_kind}), jax {jax.__version__}, "
          f"{datetime.date.today().isoformat()}",
          f"- H100 times: max(FLOPs / {args.peak_tflops:g} TFLOP/s, bytes / "
          f"{args.hbm_tbps:g} TB/s); verdict 'waste' where XLA exceeds the ideal by > {WASTE}×",
          "- command: `python tools/bench/roofline.py "
          + " ".join(sys.argv[1:] if argv is None else argv) + "`"]
  if device.platform == "cpu":
    meta.append("- CPU backend: FLOPs and bytes follow the CPU's fusion decisions (every "
                "fusion's operands are bytes accessed); a GPU compile fuses more")
  print("\n".join(meta))
  print(HEADER, flush=True)
  rows = []
  for group in args.only:
    for p in programs.BUILDERS[group](args.tiny):
      rows.append(analyse(p, args))
      print(format_row(rows[-1]), f"  [{rows[-1]['seconds']:.0f} s]", flush=True)
  if args.out:
    write_section(args.out, args.section, "\n".join([*meta, "", HEADER, *map(format_row, rows)]))
    print(f"wrote section {args.section!r} of {args.out}")
  return rows


if __name__ == "__main__":
  main()
