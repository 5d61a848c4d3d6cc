"""Shared fixtures: the path to the measured data, and the two ~100k-point engine cases with
their SciPy reference (computed once per session; helpers live in helpers.py)."""

from pathlib import Path

import pytest
from helpers import (
    REAL_DATA,
    bounds_for,
    make_spec,
    noisy_data,
    scipy_reference,
    start_for,
    truth_for,
)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (REAL_DATA / "chx_two_time" / "test_g2.npy").exists():
        pytest.skip(f"measured data not found under {REAL_DATA}")
    return REAL_DATA


@pytest.fixture(scope="session")
def static_case():
    spec = make_spec("static", n_frames=201, n_phi=5)  # 100,500 points
    truth = truth_for(spec)
    y = noisy_data(spec, truth)
    lb, ub = bounds_for(spec)
    p0 = start_for(spec, truth)
    return spec, truth, y, p0, lb, ub, scipy_reference(spec, y, p0, lb, ub)


@pytest.fixture(scope="session")
def laminar_case():
    spec = make_spec("laminar_flow", n_frames=160, n_phi=8)  # 101,760 points
    truth = truth_for(spec)
    y = noisy_data(spec, truth, seed=1)
    lb, ub = bounds_for(spec)
    p0 = start_for(spec, truth)
    return spec, truth, y, p0, lb, ub, scipy_reference(spec, y, p0, lb, ub)
