"""Task tests: faster XLA compiles for the duration of each test (restored afterwards), helpers importable."""
import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.dirname(__file__))   # tasks_testlib


@pytest.fixture(autouse=True)
def _fast_compiles():
  previous = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", previous)
