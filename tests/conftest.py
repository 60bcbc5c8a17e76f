"""Shared pytest setup.

- The ``slow`` marker: tests that start subprocesses (the demo script, ``torchrun``) or run a
  study end to end. The whole suite runs by default (as CI does: ``bash dev.sh test``); the
  fast tier for development is ``python -m pytest -m "not slow"``.
- The repository root is importable, so that the tests import ``examples`` and
  ``benchmarks`` as packages also under a bare ``pytest`` (``python -m pytest`` from the
  root adds it by itself).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: starts subprocesses or runs a study end to end (deselect with -m 'not slow')")
