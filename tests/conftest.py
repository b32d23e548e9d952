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


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _demo_cache(tmp_path_factory):
  """The demo scene and land-cover caches go to a per-session temp dir (never the user's ~/.cache)."""
  old = os.environ.get("SPECTRALGPT_JAX_CACHE")
  os.environ["SPECTRALGPT_JAX_CACHE"] = str(tmp_path_factory.mktemp("demo_cache"))
  yield
  if old is None:
    os.environ.pop("SPECTRALGPT_JAX_CACHE", None)
  else:
    os.environ["SPECTRALGPT_JAX_CACHE"] = old


@pytest.fixture
def fast_compiles():
  """Faster XLA compiles for one test, restored afterwards (the training and task test directories use it for every
  test; the parity tests keep the default optimisations)."""
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
