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
