"""Data-layer test setup: the fixture writers are importable."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # s2_fixtures
