"""Test setup: 8 fake CPU devices, parsed absl flags (grain reads them), fast compiles, and one compilation cache
per test run.

Must run before any test module imports jax.
"""
import os
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Many tests compile the same tiny programs (one task's train step from several tests, the CLI subprocesses): a
# persistent compilation cache shared by the pytest-xdist workers and the subprocesses they start (through the
# environment) compiles each once. Each run makes a new empty one and removes it at the end: nothing is carried over
# from an earlier run or another checkout.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:   # the pytest process (xdist's controller): its workers and their subprocesses inherit the variable
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="spectralgpt_jax_xla_")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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


def pytest_sessionfinish(session):
  if _OWN_CACHE and not hasattr(session.config, "workerinput"):   # the process that made the cache directory
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
