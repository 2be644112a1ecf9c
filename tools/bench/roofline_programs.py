"""The programs tools/bench/roofline.py compiles, at the benchmark sizes or tiny ones (--tiny).

Each builder returns `Program`s: a jitted function and abstract arguments (ShapeDtypeStructs,
`eval_shape`d parameters), so nothing big is allocated. The sizes are those of
tools/bench/{nearest_code,train_step,sampling}.py; parameters of the sampling programs are
bf16, as tools/bench/sampling.py casts them. Transformer layer stacks are compiled with their
scan unrolled (same parameters and numerics): XLA's cost analysis counts a loop body once.
"""

import dataclasses
import functools
import math
import pathlib
import sys
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools" / "bench"))
from jaxtok.kernels.nearest_code import xla as nc_xla  # noqa: E402
from jaxtok.kernels.nearest_code.reference import nearest_code_reference  # noqa: E402
from jaxtok.models.generators import ar, sampling  # noqa: E402
from jaxtok.data import images as image_lib  # noqa: E402
from jaxtok.train import sharding, tokenizer_trainer  # noqa: E402
import train_step as bench_train  # noqa: E402  (tools/bench/train_step.py)
from tools import aot_compile  # noqa: E402

NEAREST_SHAPES = ((65536, 16384, 8), (65536, 16384, 32), (65536, 4096, 256),
                  (16384, 65536, 16), (4096, 262144, 16))
TINY_NEAREST = ((1024, 512, 8),)
GROUPS = ("nearest_code", "tokenizer", "gpt_train", "gpt_decode", "sampler")


@dataclasses.dataclass
class Program:
  """One compiled program of the table.

  The ideal bytes are: every argument read once, every output written once (or
  `written_bytes` where only part of an output must be written, e.g. the new rows of a
  donated KV cache) and, if `activations`, every matmul/conv output written once and read
  once. `ideal_bytes_of=(program, times)` replaces that by `times` x another program's ideal
  (the sampler: T decode steps). `loop_body` / `loop_trips`: the compiled cost adds
  (loop_trips - 1) x the body's, since XLA's cost analysis counts the loop body once.
  """

  name: str
  size: str
  fn: Callable
  args: tuple
  written_bytes: float | None = None
  activations: bool = True
  ideal_bytes_of: tuple["Program", int] | None = None
  loop_body: "Program | None" = None
  loop_trips: int = 1


def itemsize(dtype) -> int:
  """Bytes per element; a PRNG key (an extended dtype) counts as its two uint32 words."""
  return getattr(dtype, "itemsize", None) or 8


def tree_bytes(tree) -> int:
  return sum(math.prod(x.shape) * itemsize(x.dtype) for x in jax.tree.leaves(tree))


def _sds(tree, dtype=None):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype or x.dtype), tree)


# ------------------------------------------------------------------ nearest code

def nearest_code(tiny: bool) -> list[Program]:
  """The tiled XLA op and the materializing reference, f32, L2 (the Pallas kernels do not
  compile on a CPU)."""
  out = []
  for n, k, d in TINY_NEAREST if tiny else NEAREST_SHAPES:
    x = jax.ShapeDtypeStruct((n, d), jnp.float32)
    size = f"N={n} K={k} D={d} f32"
    block_k = nc_xla.default_block_k(n, k)
    tiles = -(-k // block_k)
    body = Program("  one tile", size, jax.jit(functools.partial(
        nc_xla.nearest_code_xla, metric="l2", block_k=block_k)),
        (x, jax.ShapeDtypeStruct((block_k, d), jnp.float32)), activations=False)
    xla = functools.partial(nc_xla.nearest_code_xla, metric="l2")
    e = jax.ShapeDtypeStruct((k, d), jnp.float32)
    out.append(Program("nearest_code xla", size, jax.jit(xla), (x, e), activations=False,
                       loop_body=body if tiles > 1 else None, loop_trips=max(tiles - 1, 1)))
    ref = functools.partial(nearest_code_reference, metric="l2")
    out.append(Program("nearest_code reference", size, jax.jit(ref), (x, e),
                       activations=False))
  return out


# ------------------------------------------------------------------ tokenizer

def _tokenizer_step(case: str, batch: int, tiny: bool, remat: bool = False) -> Program:
  config = bench_train.tokenizer_config(case, "bf16", tiny, remat)
  config.train.batch_size = batch
  mesh = sharding.make_mesh((1, 1, 1))
  parts = tokenizer_trainer.build_parts(config)
  _, _, _, abstract, step = tokenizer_trainer.jitted_step(parts, config, mesh)
  size = config.data.image_size
  images = {"image": jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8,
                                          sharding=sharding.batch_sharding(mesh))}
  lpips = aot_compile.lpips_abstract(config, sharding.replicated(mesh))
  what = "full iteration (G + D steps, LPIPS, EMA)" if case == "tokenizer-full" else "L1 + VQ"
  what += ", ResnetBlocks rematerialized" if remat else ""
  return Program(f"tokenizer {what}", f"batch {batch}, {size}x{size}, bf16", step,
                 (abstract, images, lpips))


def _encode(batch: int, tiny: bool) -> Program:
  config = bench_train.tokenizer_config("encode", "bf16", tiny)
  tokenizer = tokenizer_trainer.build_parts(config).tokenizer
  size = config.data.image_size
  k = jax.random.key(0)
  variables = nn.unbox(jax.eval_shape(
      tokenizer.init, {"params": k, "quantizer": k, "dropout": k},
      jnp.zeros((1, size, size, 3), jnp.float32)))
  encode = jax.jit(lambda v, x: tokenizer.apply(v, image_lib.to_float(x), method="encode"))
  images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8)
  return Program("tokenizer encode", f"batch {batch}, {size}x{size}, bf16", encode,
                 (_sds(variables), images))


def tokenizer(tiny: bool) -> list[Program]:
  if tiny:
    return [_tokenizer_step("tokenizer-full", 4, True), _encode(4, True)]
  return [*(_tokenizer_step("tokenizer-full", b, False) for b in (32, 64, 96)),
          *(_tokenizer_step("tokenizer-full", b, False, remat=True) for b in (32, 96)),
          _tokenizer_step("tokenizer-l1", 32, False), _encode(32, False)]


# ------------------------------------------------------------------ GPT

def gpt_model(tiny: bool) -> ar.GPT:
  fields = dict(codebook_size=16384, token_shape=(16, 16), num_classes=1000,
                dtype=jnp.bfloat16, scan_unroll=True)
  if tiny:
    return ar.GPT(**{**fields, **bench_train.CPU_GPT})
  return ar.GPT.from_preset("GPT-B", **fields)


def _gpt_params(model: ar.GPT):
  tokens = jnp.zeros((1, *model.token_shape), jnp.int32)
  return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), tokens,
                                 jnp.zeros((1,), jnp.int32)))["params"]


def gpt_train(tiny: bool) -> list[Program]:
  model = gpt_model(tiny)
  params = _gpt_params(model)
  tx = optax.adamw(1e-4, b1=0.9, b2=0.95, weight_decay=0.05)
  opt_state = jax.eval_shape(tx.init, params)
  step = jax.jit(bench_train.make_gpt_step(model, tx), donate_argnums=(0, 1))
  out = []
  for batch in (4,) if tiny else (64, 256):
    tokens = jax.ShapeDtypeStruct((batch, *model.token_shape), jnp.int32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    out.append(Program("GPT train step (AdamW)", f"batch {batch}, bf16", step,
                       (params, opt_state, tokens, labels, jax.random.key(1))))
  return out


def _decode_programs(model: ar.GPT, batch: int, cfg_scale: float):
  """(one decode step, the sampling loop's body, the whole sampler) at `batch` images."""
  config = sampling.SamplingConfig(cfg_scale=cfg_scale)
  rows = batch * (2 if config.guidance else 1)
  variables = {"params": _sds(_gpt_params(model), jnp.bfloat16)}
  cache = jax.eval_shape(lambda: model.init_cache(rows))
  size = f"batch {batch}, CFG {cfg_scale:g} ({rows} rows), bf16"
  int_ = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
  decode = jax.jit(lambda v, t, s, c: model.apply(v, t, s, c, method=ar.GPT.decode_step),
                   donate_argnums=(3,))
  head_dim = model.width // model.num_heads
  new_kv = 2 * model.depth * rows * model.num_heads * head_dim * 2  # bf16 K and V rows
  step = Program("GPT decode step", size, decode, (variables, int_(rows), int_(), cache),
                 written_bytes=rows * model.codebook_size * 4 + new_kv)
  key = jax.random.key(0)
  body = jax.jit(lambda v, r, s, t, c: ar.sample_step(model, config, v, r, s, t, c),
                 donate_argnums=(4,))
  body = Program("  loop body", size, body,
                 (variables, key, int_(), int_(batch, model.num_tokens), cache))
  whole = jax.jit(lambda v, c, lab, drop, r: ar._sample(  # pylint: disable=protected-access
      model, config, v, c, lab, drop, None, r), donate_argnums=(1,))
  labels, drop = int_(rows), jax.ShapeDtypeStruct((rows,), jnp.bool_)
  sampler = Program(f"GPT sampler, {model.num_tokens} tokens", size, whole,
                    (variables, cache, labels, drop, key),
                    ideal_bytes_of=(step, model.num_tokens), loop_body=body,
                    loop_trips=model.num_tokens - 1)
  return step, sampler


def gpt_decode(tiny: bool) -> list[Program]:
  model = gpt_model(tiny)
  return [_decode_programs(model, b, 2.0)[0] for b in ((2,) if tiny else (64, 256))]


def gpt_sampler(tiny: bool) -> list[Program]:
  model = gpt_model(tiny)
  return [_decode_programs(model, b, 2.0)[1] for b in ((2,) if tiny else (64, 256))]


BUILDERS = {"nearest_code": nearest_code, "tokenizer": tokenizer, "gpt_train": gpt_train,
            "gpt_decode": gpt_decode, "sampler": gpt_sampler}
