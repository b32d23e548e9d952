"""Data-layer test setup: the demo scene cache goes to a per-session temp dir (never the user's ~/.cache)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # s2_fixtures


@pytest.fixture(scope="session", autouse=True)
def _demo_cache(tmp_path_factory):
  old = os.environ.get("SPECTRALGPT_JAX_CACHE")
  os.environ["SPECTRALGPT_JAX_CACHE"] = str(tmp_path_factory.mktemp("demo_cache"))
  yield
  if old is None:
    os.environ.pop("SPECTRALGPT_JAX_CACHE", None)
  else:
    os.environ["SPECTRALGPT_JAX_CACHE"] = old
