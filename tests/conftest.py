"""Shared fixtures: the path to the measured data, and the two ~100k-point engine cases with
their SciPy reference (computed once per session; helpers live in helpers.py)."""

import signal
from pathlib import Path

import pytest
from helpers import REAL_DATA, engine_case


def pytest_configure(config):
    """Stop signals at Python's defaults, as in a terminal: a suite started in the
    background of a non-interactive shell inherits SIGINT ignored, and a fit keeps a stop
    signal that was ignored at its start ignored (tests that stop a fit in-process with
    SIGINT would then run on)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
