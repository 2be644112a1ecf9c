"""Device mesh, the one logical-axis rules table, and the shardings of states and batches.

The mesh has three axes: "data" (pure data parallelism: parameters replicated), "fsdp"
(data parallel too, but parameters and optimizer states are split across it, ZeRO-3 style)
and "tensor" (model parallelism inside layers). Batches are split over data x fsdp.

Models name the axes of their parameters with `nn.with_logical_partitioning` ("embed",
"mlp", ...); `LOGICAL_AXIS_RULES` below maps every such name to a mesh axis. A dimension
whose size the mesh axis does not divide is replicated instead (e.g. the 3 input channels of
the first conv), so every model runs on every mesh. Parameters without logical names (the
discriminators, codebooks) are sharded over "fsdp" along their largest divisible dimension
once they hold at least `FSDP_MIN_SIZE` values; smaller ones are replicated.
"""

import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or None: replicated). Covers every name used in jaxtok.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),  # transformer width
    ("mlp", "tensor"),  # feed-forward hidden width
    ("heads", "tensor"),  # attention heads
    ("kv", None),  # per-head width
    ("vocab", "tensor"),  # token vocabulary of generators
    ("classes", None),  # class-embedding rows of generators (1001: rarely divisible)
    ("conv_in", "fsdp"),  # conv kernel input channels
    ("conv_out", "tensor"),  # conv kernel output channels (and conv biases)
    ("norm", None),  # norm scales and biases: small, replicated
    ("layers", None),  # stacked (scanned) layers
)

FSDP_MIN_SIZE = 2**14

PyTree = Any


def maybe_initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when the environment says this is one of several
  processes; a single-process run is left alone. Must run before JAX touches a device.

  Recognised: JAX_COORDINATOR_ADDRESS (with JAX_NUM_PROCESSES and JAX_PROCESS_ID, as our
  launchers set), SLURM_NTASKS > 1, OMPI_COMM_WORLD_SIZE > 1, or a multi-host TPU slice
  (TPU_WORKER_HOSTNAMES listing several hosts). Anything else runs as one process.
  """
  env = os.environ
  if jax.distributed.is_initialized():
    return
  if env.get("JAX_COORDINATOR_ADDRESS"):
    kwargs = {}
    if "JAX_NUM_PROCESSES" in env:
      kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in env:
      kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(env["JAX_COORDINATOR_ADDRESS"], **kwargs)
  elif (int(env.get("SLURM_NTASKS", "1")) > 1 or int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
        or "," in env.get("TPU_WORKER_HOSTNAMES", "")):
    jax.distributed.initialize()
  else:
    return
  log.info("jax.distributed initialized: process %d of %d", jax.process_index(),
           jax.process_count())


def mesh_shape(shape: Sequence[int], device_count: int) -> tuple[int, int, int]:
  """Resolves one -1 entry of a (data, fsdp, tensor) shape to fill `device_count` devices."""
  shape = tuple(int(s) for s in shape)
  if len(shape) != 3 or shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape must be 3 sizes (data, fsdp, tensor), each >= 1, at most one "
                     f"-1 (fill the remaining devices); got {shape}")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if device_count % known:
      raise ValueError(f"mesh shape {shape}: {device_count} devices are not divisible by "
                       f"{known}, so -1 cannot fill them")
    shape = tuple(device_count // known if s == -1 else s for s in shape)
  return shape


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> jax.sharding.Mesh:
  """The ("data", "fsdp", "tensor") mesh with Auto axes (GSPMD propagation from shardings).

  A single-process run may use fewer devices than it has (the first ones); a multi-process
  run must use them all.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(shape, len(devices))
  needed = math.prod(shape)
  if needed > len(devices) or (needed < len(devices) and jax.process_count() > 1):
    raise ValueError(f"mesh shape {shape} needs {needed} devices; {len(devices)} are available"
                     f" (use -1 for one axis to fill them)")
  auto = (jax.sharding.AxisType.Auto,) * 3
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices[:needed])


def _mesh_axes_of(name: str | None, rules) -> tuple[str, ...]:
  if name is None:
    return ()
  for logical, mesh_axes in rules:
    if logical == name:
      if mesh_axes is None:
        return ()
      return (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
  raise ValueError(f"logical axis name {name!r} has no rule in LOGICAL_AXIS_RULES; known: "
                   f"{[r[0] for r in rules]}. Add it to jaxtok/train/sharding.py")


def spec_for(shape: Sequence[int], logical: P | None, mesh: jax.sharding.Mesh,
             rules=LOGICAL_AXIS_RULES) -> P:
  """The mesh PartitionSpec of an array of `shape` whose dims carry `logical` names.

  Dimensions the mesh axes do not divide, and repeats of a mesh axis, are replicated.
  Unnamed arrays (logical None or all-None) of >= FSDP_MIN_SIZE values get "fsdp" on their
  largest dimension that it divides.
  """
  shape = tuple(shape)
  names = tuple(logical) if logical is not None else ()
  names = names + (None,) * (len(shape) - len(names))
  used, spec = set(), []
  for size, name in zip(shape, names):
    axes = tuple(a for a in _mesh_axes_of(name, rules) if a not in used)
    if axes and size % math.prod(mesh.shape[a] for a in axes) == 0:
      used.update(axes)
      spec.append(axes[0] if len(axes) == 1 else axes)
    else:
      spec.append(None)
  fsdp = mesh.shape["fsdp"]
  if all(n is None for n in names) and fsdp > 1 and math.prod(shape) >= FSDP_MIN_SIZE:
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
      if shape[dim] % fsdp == 0:
        spec[dim] = "fsdp"
        break
  return P(*spec)


def state_shardings(boxed_abstract: PyTree, mesh: jax.sharding.Mesh,
                    rules=LOGICAL_AXIS_RULES) -> PyTree:
  """NamedShardings for the unboxed version of `boxed_abstract`.

  `boxed_abstract` is `jax.eval_shape` of a state-building function whose parameters (and,
  through optax, optimizer moments) are still `nn.Partitioned` boxes.
  """
  logical = nn.get_partition_spec(boxed_abstract)
  abstract = nn.meta.unbox(boxed_abstract)
  return jax.tree.map(lambda x, spec: NamedSharding(mesh, spec_for(x.shape, spec, mesh, rules)),
                      abstract, logical, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh, *, name: str) -> None:
  """Raises unless the global batch splits evenly over data x fsdp and over processes."""
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if batch_size % shards or batch_size % jax.process_count():
    raise ValueError(f"{name}={batch_size} must be divisible by data x fsdp = {shards} mesh "
                     f"shards and by {jax.process_count()} processes")


def global_batch(local: dict[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays sharded over data x fsdp."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()}
