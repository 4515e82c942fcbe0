"""Shared test setup: import tinyconv from this checkout (no install needed), and a seeded rng."""
import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


@pytest.fixture
def rng() -> np.random.Generator:
    """A Generator seeded the same way in every test, so failures replay exactly."""
    return np.random.default_rng(0)
