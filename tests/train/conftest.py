"""Training-system tests: faster XLA compiles for every test (restored afterwards), helpers importable."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))   # train_testlib


@pytest.fixture(autouse=True)
def _fast_compiles(fast_compiles):
  yield
