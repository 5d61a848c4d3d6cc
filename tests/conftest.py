"""Shared fixtures: the path to the measured data (helpers live in helpers.py)."""

from pathlib import Path

import pytest
from helpers import REAL_DATA


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "chx_two_time" / "test_g2.npy").exists():
        pytest.skip(f"measured data not found under {REAL_DATA}")
    return REAL_DATA
