r"""Compiles the tokenizer train step for a config and a mesh ahead of time, without running it,
and prints its per-device memory use and how the state is sharded: a pod config can be checked
on a laptop.

    python tools/aot_compile.py --config configs/tokenizers/llamagen_vq16.py --mesh 2,4,1 \
        --devices 8 [--config.train.batch_size=64 ...]
    python tools/aot_compile.py --config configs/demo/tokenizer.py:tiny --mesh 2,2,2 --devices 8
    python tools/aot_compile.py --config configs/tokenizers/llamagen_vq16.py --mesh 4,4,1 \
        --topology v5e:4x4                     # TPU compile-only devices; needs libtpu

--mesh is (data, fsdp, tensor), one entry may be -1 (default: the config's mesh.shape).
--devices N fakes N CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, set
before JAX is imported); --topology NAME compiles for a TPU slice through
`jax.experimental.topologies.get_topology_desc` (libtpu must be installed, no TPU needed);
with neither, the devices of this machine are used. `--config.a.b=value` overrides config
fields as the CLI does.

Nothing is allocated at full size: the state, batch and LPIPS weights are ShapeDtypeStructs
carrying their shardings (jax.eval_shape), and the trainer's own jitted step is only
`.lower(...).compile()`d. Memory figures are XLA's `compiled.memory_analysis()`, per device:
arguments (state, batch, LPIPS weights), outputs, temporaries and generated code. Arguments
and outputs alias (the state is donated), so the estimated peak is
argument + output - alias + temp. A CPU compile's temp size is indicative only: each backend
schedules and fuses differently; compile with --topology for TPU figures.
"""

import argparse
import importlib.util
import math
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

PROG = "aot_compile.py"


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
  """Our flags, and the `a.b=value` config overrides given as --config.a.b=value."""
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="file.py or file.py:arg")
  parser.add_argument("--mesh", help="data,fsdp,tensor sizes, e.g. 2,4,1 (default: config's)")
  target = parser.add_mutually_exclusive_group()
  target.add_argument("--devices", type=int, help="fake this many CPU devices")
  target.add_argument("--topology", help="TPU topology to compile for, e.g. v5e:4x4")
  parser.add_argument("--batch-size", type=int, help="global batch (default: train.batch_size)")
  parser.add_argument("--top", type=int, default=8, help="largest parameters to list")
  args, rest = parser.parse_known_args(argv)
  overrides = []
  for item in rest:
    if not item.startswith("--config.") or "=" not in item:
      parser.error(f"unrecognized argument {item!r}; config overrides look like "
                   f"--config.a.b=value")
    overrides.append(item[len("--config."):])
  if args.devices is not None and args.devices < 1:
    parser.error(f"--devices must be >= 1; got {args.devices}")
  return args, overrides


def parse_mesh(text: str) -> tuple[int, ...]:
  try:
    shape = tuple(int(s) for s in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != 3:
    raise ValueError(f"--mesh must be three comma-separated sizes data,fsdp,tensor such as "
                     f"2,4,1; got {text!r}")
  return shape


def fake_cpu_devices(count: int) -> None:
  """Makes JAX see `count` CPU devices; must run before JAX is imported."""
  if "jax" in sys.modules:
    raise RuntimeError("--devices must be set before JAX is imported: run aot_compile.py as a "
                       "script")
  os.environ["JAX_PLATFORMS"] = "cpu"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={count}"])


def topology_devices(name: str) -> list:
  """Compile-only TPU devices of the topology `name` (e.g. "v5e:4x4")."""
  if importlib.util.find_spec("libtpu") is None:
    raise SystemExit(f"{PROG}: --topology {name} needs libtpu (pip install 'jax[tpu]'), which "
                     f"is not installed; use --devices N to compile for fake CPU devices")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  return list(topologies.get_topology_desc(name, platform="tpu").devices)


def lpips_abstract(config, replicated):
  """The LPIPS weights as ShapeDtypeStructs ({} when the config has no perceptual loss), as
  the trainer passes them to its step."""
  if config.loss.perceptual_weight <= 0:
    return {}
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jaxtok.models import lpips  # pylint: disable=g-import-not-at-top

  # LPIPS itself refuses random init (its weights are pretrained); its trunk and heads
  # have the shapes of load_lpips_params().
  size = lpips.MIN_SIZE
  vgg = jax.eval_shape(lpips.VGG16Features().init, jax.random.key(0),
                       jnp.zeros((1, size, size, 3), jnp.float32))["params"]
  params = {"vgg": vgg, **{f"lin{k}": jax.ShapeDtypeStruct((c,), jnp.float32)
                           for k, c in enumerate(lpips.TAP_CHANNELS)}}
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      {"params": params})


def _bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
    if abs(n) < 1024 or unit == "TiB":
      return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
    n /= 1024


def state_summary(abstract, top: int) -> list[str]:
  """Per-collection global and per-device sizes, and the largest parameters' shardings."""
  import jax  # pylint: disable=g-import-not-at-top

  lines = [f"{'state':<16} {'arrays':>7} {'values':>14} {'global':>11} {'per device':>11}"]
  for field in ("params", "ema_params", "opt_state", "quantizer_state", "d_params", "d_state",
                "d_opt_state"):
    leaves = jax.tree.leaves(getattr(abstract, field))
    if not leaves:
      continue
    values = sum(math.prod(x.shape) for x in leaves)
    total = sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves)
    local = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
    lines.append(f"{field:<16} {len(leaves):>7} {values:>14,} {_bytes(total):>11} "
                 f"{_bytes(local):>11}")
  flat = jax.tree_util.tree_flatten_with_path(abstract.params)[0]
  flat.sort(key=lambda kv: -math.prod(kv[1].shape))
  lines.append(f"largest parameters (of {len(flat)}):")
  for path, x in flat[:top]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    lines.append(f"  {name:<48} {str(tuple(x.shape)):<22} {x.sharding.spec}")
  return lines


def memory_lines(compiled) -> tuple[list[str], dict[str, int]]:
  analysis = compiled.memory_analysis()
  if isinstance(analysis, (list, tuple)):  # some backends return one per device
    analysis = analysis[0] if analysis else None
  if analysis is None:
    return ["memory analysis: not available on this backend"], {}
  fields = {"argument": "argument_size_in_bytes", "output": "output_size_in_bytes",
            "alias": "alias_size_in_bytes", "temp": "temp_size_in_bytes",
            "generated code": "generated_code_size_in_bytes"}
  sizes = {k: int(getattr(analysis, attr, 0) or 0) for k, attr in fields.items()}
  sizes["peak estimate"] = (sizes["argument"] + sizes["output"] - sizes["alias"]
                            + sizes["temp"])
  lines = ["memory per device (compiled.memory_analysis()):"]
  lines += [f"  {k:<15} {v:>16,} bytes  {_bytes(v):>11}" for k, v in sizes.items()]
  return lines, sizes


def main(argv=None) -> dict:
  args, overrides = parse_args(argv)
  if args.devices is not None:
    fake_cpu_devices(args.devices)
  devices = topology_devices(args.topology) if args.topology else None

  import jax  # pylint: disable=g-import-not-at-top

  from jaxtok.config import load_config  # pylint: disable=g-import-not-at-top
  from jaxtok.train import sharding  # pylint: disable=g-import-not-at-top
  from jaxtok.train import tokenizer_trainer  # pylint: disable=g-import-not-at-top

  try:
    config = load_config(args.config, overrides)
    shape = parse_mesh(args.mesh) if args.mesh else tuple(config.mesh.shape)
    devices = jax.devices() if devices is None else devices
    mesh = sharding.make_mesh(shape, devices=devices)
    batch_size = args.batch_size or config.train.batch_size
    sharding.check_batch_size(batch_size, mesh, name="batch size")
    config.train.batch_size = batch_size
    parts = tokenizer_trainer.build_parts(config)
  except (ValueError, FileNotFoundError) as e:
    raise SystemExit(f"{PROG}: error: {e}") from None

  kind = devices[0].device_kind
  print(f"config: {args.config} {' '.join(overrides)}".rstrip())
  print(f"mesh: {dict(mesh.shape)} = {mesh.size} of {len(devices)} {devices[0].platform} "
        f"devices ({kind}); jax {jax.__version__}")
  t0 = time.perf_counter()
  _, _, _, abstract, step = tokenizer_trainer.jitted_step(parts, config, mesh)
  size = config.data.image_size
  batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), "uint8",
                                         sharding=sharding.batch_sharding(mesh))}
  lpips = lpips_abstract(config, sharding.replicated(mesh))
  lowered = step.lower(abstract, batch, lpips)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  print(f"batch: {batch_size} x {size}x{size}x3 uint8 (per device "
        f"{batch['image'].sharding.shard_shape(batch['image'].shape)}); compute dtype "
        f"{config.train.compute_dtype}; lowered in {t1 - t0:.1f} s, compiled in {t2 - t1:.1f} s")
  print("\n".join(state_summary(abstract, args.top)))
  lines, sizes = memory_lines(compiled)
  print("\n".join(lines))
  return {"mesh": dict(mesh.shape), "memory": sizes}


if __name__ == "__main__":
  main()
