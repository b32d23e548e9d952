"""Test setup: 8 fake CPU devices, parsed absl flags (grain reads them), fast compiles.

Must run before any test module imports jax.
"""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS(sys.argv[:1], known_only=True)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
