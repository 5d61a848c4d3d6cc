"""The data-driven start of J(t) (start_estimate.py): from a plain start (J flat)
its estimate lies near the truth of a synthetic static two-time matrix, and the fit
from it ends at SciPy's optimum, with its pass counted."""

import numpy as np
import pytest
from helpers import assert_matches, chx_window, make_spec, noisy_data, trf

from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.problems import TwoTimeProblem
from homodyne.optimization.settings import EngineOptions
from homodyne.optimization.sources import InMemoryData
from homodyne.optimization.start_estimate import applies, start_from_data

TRUTH_PHYS = [1.0e4, -0.5, 3000.0]


@pytest.fixture(scope="module")
def case():
    spec = make_spec("static", n_frames=80, n_phi=2)
    truth = spec.pack([0.3, 0.25], [1.0, 1.02], TRUTH_PHYS)
    y = noisy_data(spec, truth, sigma=0.02, seed=5)
    lb = spec.pack(0.0, 0.5, [0.0, -2.0, -1e4])
    ub = spec.pack(1.0, 1.5, [1e6, 2.0, 1e4])
    plain = spec.pack([0.2, 0.2], [1.05, 1.05], [1e-3, 0.0, 0.0])
    return spec, truth, y, plain, lb, ub


def test_estimate_recovers_the_power_law_from_a_plain_start(case):
    spec, truth, y, plain, lb, ub = case
    problem = TwoTimeProblem(spec)
    assert applies(problem, plain, lb, ub)
    assert not applies(problem, truth, lb, ub)  # a start with a trend is left alone
    x, line, batches, _ = start_from_data(problem, InMemoryData({"y": y}, y.size, 4096),
                                          plain, lb, ub)
    assert line.startswith("start estimate from") and batches == -(-y.size // 4096)
    d0, alpha, d_off = x[4:]
    assert d0 == pytest.approx(1.0e4, rel=0.2)
    assert alpha == pytest.approx(-0.5, abs=0.1)
    # D_offset trades off against alpha (33% here); J(t) itself within 20% at every frame
    assert d_off == pytest.approx(3000.0, rel=0.4)
    t = spec.frame_times()
    j_true = TRUTH_PHYS[0] * t ** TRUTH_PHYS[1] + TRUTH_PHYS[2]
    np.testing.assert_allclose(d0 * t ** alpha + d_off, j_true, rtol=0.2)
    np.testing.assert_allclose(x[:4], truth[:4], rtol=0.05)


def test_fit_from_the_estimate_ends_at_scipys_optimum(case):
    spec, truth, y, plain, lb, ub = case
    ref = trf(spec, y, truth, lb, ub, max_nfev=200)
    on = NLSQWrapper(options=EngineOptions(start_estimate=True)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    assert on.converged and on.messages[0].startswith("start estimate from")
    dz = (on.parameters - ref.x) / on.uncertainties
    assert np.all(np.abs(dz) < 1e-3), dz
    assert on.cost <= ref.cost + 1e-9
    assert len(on.pass_seconds) == on.passes  # the estimate's pass is one of them
    off = NLSQWrapper(options=EngineOptions(start_estimate=False)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    assert not any(m.startswith("start estimate") for m in off.messages)


def test_measured_window_from_the_estimate_reaches_a_lower_minimum(real_data):
    """CHX frames 1-175 from a plain start: without the estimate the fit ends at the
    logarithmic edge (21 passes, cost 38.538872); from the estimate (J < 0 over the data,
    mirrored to D0 >= 0: the model has |∫J|) it converges in 6 passes at an interior
    minimum 0.007 lower, where SciPy's TRF started from it stays."""
    spec, y, p0, lb, ub = chx_window(real_data, end_frame=175)
    off = NLSQWrapper(options=EngineOptions(start_estimate=False)).fit_two_time(
        None, spec, p0, (lb, ub), y=y)
    on = NLSQWrapper().fit_two_time(
        None, spec, p0, (lb, ub), y=y)
    assert on.converged and on.passes <= 8, on.summary()
    assert on.cost < off.cost - 1e-3, (on.cost, off.cost)
    d0, alpha, d_off = on.parameters[2:]
    t = spec.frame_times()
    assert np.all(d0 * t ** alpha + d_off < 0) and on.power_law_optimum["alpha"] == "interior"
    ref = trf(spec, y, on.parameters, lb, ub, max_nfev=200)
    assert ref.status > 0 and ref.cost >= on.cost - 1e-9
    assert_matches(on, ref.x)


def test_with_coarse_levels_the_estimate_reads_the_densest_level():
    """Data big enough for coarse levels: the cells come from the densest level (a coarse
    pass, counted in coarse_passes; no extra full pass), and the optimum is the one the
    fit reaches without the estimate."""
    spec = make_spec("static", n_frames=200, n_phi=1)
    truth = spec.pack(0.3, 1.0, TRUTH_PHYS)
    y = noisy_data(spec, truth, sigma=0.02, seed=6)
    lb, ub = spec.pack(0.0, 0.5, [0.0, -2.0, -1e4]), spec.pack(1.0, 1.5, [1e6, 2.0, 1e4])
    plain = spec.pack(0.2, 1.05, [1e-3, 0.0, 0.0])
    opts = dict(coarse_points=2000, coarse_level_factor=4)
    on = NLSQWrapper(options=EngineOptions(start_estimate=True, **opts)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    off = NLSQWrapper(options=EngineOptions(start_estimate=False, **opts)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    assert on.messages[0].endswith(f"(on the coarse level of {on.coarse_points:,} points)")
    assert on.converged and off.converged and len(on.pass_seconds) == on.passes
    dz = (on.parameters - off.parameters) / off.uncertainties
    assert np.all(np.abs(dz) < 1e-3), dz


def test_the_config_key_turns_it_off(tmp_path):
    from homodyne.config import validate_config
    from homodyne.pipeline import make_wrapper

    data = tmp_path / "d.h5"
    data.touch()
    raw = {"experimental_data": {"file_path": str(data)},
           "initial_parameters": {"parameter_names": ["D0", "alpha", "D_offset"],
                                  "values": [1000.0, 0.0, 0.0]}}
    assert make_wrapper(validate_config(raw)).options.start_estimate is True
    raw["optimization"] = {"start_estimate": False}
    assert make_wrapper(validate_config(raw)).options.start_estimate is False
