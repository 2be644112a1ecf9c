"""Benchmark of class-conditional token sampling: GPT-B (KV cache), MaskGIT (12 steps) or
VAR-d16 (10 scales, KV cache).

    python tools/bench/sampling.py                    # GPT-B, 16x16 tokens, CFG 2.0, bf16
    python tools/bench/sampling.py --batches 64 --dtype f32 --cfg-scale 1.0
    python tools/bench/sampling.py --model maskgit --out benchmarks/results/sampling_h100.md
    python tools/bench/sampling.py --model var --cfg-scale 2.5   # VAR-d16, its cfg=1.5 ramp

Measures tokens only: turning them into pixels with a tokenizer's decoder is excluded. For
each batch size it prints a markdown row: the median of --repeats host-timed calls of
`model.sample` (one jitted loop, KV cache allocated and donated per call) around
`block_until_ready`, after --warmup calls (the first compiles), as images/s (= samples/s)
and tokens/s. Weights are random (speed does not depend on them; the zero-initialised GPT
head is replaced so draws are not uniform); with a bf16 dtype the params are cast to bf16
as well, the usual inference set-up. CFG > 1 doubles the rows the transformer runs. VAR
samples with a random multi-scale quantizer (4096 x 32, the one that turns each scale's ids
into the next scale's inputs; its work is part of the timing) and VAR's linear CFG ramp.

On CPU a reduced config runs automatically (width 64, depth 2, 8x8 tokens, codebook 1024,
batches 2 and 4): a check that the script works, not a measurement. `--out` writes the table
with the device name and JAX version to a .md or .json file (for benchmarks/results/).
"""

import argparse
import datetime
import json
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from jaxtok.models.generators import ar, maskgit, var  # noqa: E402
from jaxtok.quantizers.multiscale import MultiScaleVQ  # noqa: E402

DTYPES = {"f32": jnp.float32, "bf16": jnp.bfloat16}
CPU_FIELDS = dict(width=64, depth=2, num_heads=4, codebook_size=1024, token_shape=(8, 8))
CPU_BATCHES = (2, 4)
VAR_CPU_FIELDS = dict(width=64, depth=2, num_heads=4, codebook_size=1024, patch_nums=(1, 2, 4))


def build(name: str, dtype, cpu: bool) -> nn.Module:
  if name == "var":
    return var.VAR.from_preset("VAR-d16", dtype=dtype, **(VAR_CPU_FIELDS if cpu else {}))
  if name == "gpt":
    fields = dict(codebook_size=16384, token_shape=(16, 16), num_classes=1000, dtype=dtype)
    return ar.GPT.from_preset("GPT-B", **{**fields, **(CPU_FIELDS if cpu else {})})
  cpu_fields = dict(CPU_FIELDS, mlp_dim=256) if cpu else {}
  return maskgit.MaskGIT.from_preset("MaskGIT", num_classes=1000, dtype=dtype, **cpu_fields)


def init_params(model: nn.Module, dtype):
  tokens = (model.example_inputs(1) if isinstance(model, var.VAR)
            else jnp.zeros((1, *model.token_shape), jnp.int32))
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens,
                                        jnp.zeros((1,), jnp.int32)))["params"]
  if isinstance(model, ar.GPT):  # LlamaGen zero-initialises the head: draws would be uniform
    head = params["head"]["kernel"]
    params["head"]["kernel"] = jax.random.normal(jax.random.key(1), head.shape) * 0.02
  return jax.tree.map(lambda a: a.astype(dtype), params)


def time_sample(model, params, batch: int, args) -> tuple[float, jax.Array]:
  labels = jnp.arange(batch, dtype=jnp.int32) % 1000
  kwargs = dict(cfg_scale=args.cfg_scale, temperature=args.temperature, top_k=args.top_k,
                top_p=args.top_p)
  if isinstance(model, maskgit.MaskGIT):
    kwargs["num_steps"] = args.steps
  if isinstance(model, var.VAR):
    kwargs.update(var_quantizer(model))

  def call(seed):
    return jax.block_until_ready(model.sample(params, seed, labels, **kwargs))

  for i in range(args.warmup):
    out = call(i)
  times = []
  for i in range(args.repeats):
    t0 = time.perf_counter()
    out = call(args.warmup + i)
    times.append(time.perf_counter() - t0)
  return statistics.median(times), out


def var_quantizer(model: var.VAR) -> dict:
  """VAR.sample's quantizer and its (random) variables."""
  quantizer = MultiScaleVQ(model.codebook_size, model.latent_dim, model.patch_nums)
  side = model.patch_nums[-1]
  variables = jax.jit(quantizer.init)(jax.random.key(2),
                                      jnp.zeros((1, side, side, model.latent_dim)))
  return {"quantizer": quantizer, "quantizer_variables": variables}


HEADER = ("| model | tokens | batch | dtype | CFG | time (s) | images/s | tokens/s |\n"
          "|---|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
  return (f"| {r['model']} | {r['tokens']} | {r['batch']} | {r['dtype']} | {r['cfg']} "
          f"| {r['time_s']:.4f} | {r['images_per_s']:.1f} | {r['tokens_per_s']:.0f} |")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="gpt", choices=("gpt", "maskgit", "var"))
  parser.add_argument("--batches", nargs="+", type=int, default=[64, 256])
  parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
  parser.add_argument("--cfg-scale", type=float, default=2.0)
  parser.add_argument("--temperature", type=float, default=1.0)
  parser.add_argument("--top-k", type=int, default=0)
  parser.add_argument("--top-p", type=float, default=1.0)
  parser.add_argument("--steps", type=int, default=12, help="MaskGIT decoding steps")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", type=pathlib.Path, help="write the results to a .md or .json")
  args = parser.parse_args(argv)

  device = jax.devices()[0]
  cpu = device.platform == "cpu"
  dtype = DTYPES[args.dtype]
  model = build(args.model, dtype, cpu)
  batches = CPU_BATCHES if cpu else tuple(args.batches)
  label = ({"gpt": "GPT-B", "maskgit": "MaskGIT", "var": "VAR-d16"}[args.model]
           + (" (CPU-reduced)" if cpu else ""))
  meta = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
          "date": datetime.date.today().isoformat(),
          "timing": f"median of {args.repeats} host-timed sample() calls around "
                    f"block_until_ready after {args.warmup} warm-up calls",
          "scope": "token sampling only; tokenizer decoding to pixels is excluded",
          "sampling": f"temperature {args.temperature}, top_k {args.top_k}, "
                      f"top_p {args.top_p}, params in {args.dtype}"}
  print(f"sampling benchmark on {meta['device']}, jax {meta['jax']}; {meta['timing']}; "
        f"{meta['scope']}")
  if cpu:
    fields = VAR_CPU_FIELDS if args.model == "var" else CPU_FIELDS
    print(f"CPU: reduced config {fields}, batches {CPU_BATCHES} (not a measurement)")
  params = init_params(model, dtype)
  print(HEADER, flush=True)
  rows = []
  grid = "x".join(str(s) for s in model.token_shape)
  for batch in batches:
    seconds, tokens = time_sample(model, params, batch, args)
    assert tokens.shape == (batch, *model.token_shape)
    num_tokens = batch * model.num_tokens
    row = {"model": label, "tokens": grid, "batch": batch, "dtype": args.dtype,
           "cfg": args.cfg_scale, "time_s": seconds, "images_per_s": batch / seconds,
           "tokens_per_s": num_tokens / seconds}
    rows.append(row)
    print(format_row(row), flush=True)
  if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.out.suffix == ".json":
      args.out.write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    else:
      lines = ["# sampling benchmark", "", *(f"- {k}: {v}" for k, v in meta.items()),
               "- command: `python tools/bench/sampling.py "
               + " ".join(sys.argv[1:] if argv is None else argv) + "`", "", HEADER,
               *map(format_row, rows), ""]
      args.out.write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
