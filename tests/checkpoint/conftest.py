"""Fixtures live in conftest_helpers (importable by the tests, too)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest_helpers import remote_target, second_root  # noqa: F401
