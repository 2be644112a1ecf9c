"""Test set-up: CPU only, 8 fake devices for sharding tests, absl flags parsed for Grain."""

import os

# Both must be set before jax is imported anywhere.
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()

from absl import flags  # noqa: E402

# Grain worker processes crash under JAX unless absl flags are marked parsed.
flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402

# XLA:CPU compiles jitted threefry draws in the "partitionable" form several times slower
# (20 normals: 9 s against 1.3 s with 8 fake devices, jax 0.12); every model init pays it.
# The classic form draws other (equally valid) numbers, identically sharded or not.
jax.config.update("jax_threefry_partitionable", False)

# Broadcasting across ranks must be written out (x[:, None], reshape): an implicit promotion
# is an error in every test, so shape bugs cannot hide behind it.
jax.config.update("jax_numpy_rank_promotion", "raise")
