"""Shared fixtures: the path to the measured data, and the two ~100k-point engine cases with
their SciPy reference (computed once per session; helpers live in helpers.py)."""

from pathlib import Path

import pytest
from helpers import REAL_DATA, engine_case


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "chx_two_time" / "test_g2.npy").exists():
        pytest.skip(f"measured data not found under {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def static_case():
    return engine_case("static", n_frames=201, n_phi=5)  # 100,500 points


@pytest.fixture(scope="session")
def laminar_case():
    return engine_case("laminar_flow", n_frames=160, n_phi=8, seed=1)  # 101,760 points
