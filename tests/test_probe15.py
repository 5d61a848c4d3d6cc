"""Regression tests for probe15's findings (issue 12, a fresh round of probing this
session's new code: the data-driven start, poor_fit, the production summary)."""

import numpy as np
import pytest
from helpers import make_spec, noisy_data

from homodyne.model import point_coordinates
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.problems import TwoTimeProblem
from homodyne.optimization.settings import EngineOptions
from homodyne.optimization.sources import InMemoryData
from homodyne.optimization.start_estimate import start_from_data


@pytest.fixture(scope="module")
def plain_case():
    """A 2-angle static matrix and a plain start (J flat) the estimate applies to."""
    spec = make_spec("static", n_frames=40, n_phi=2)
    truth = spec.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 300.0])
    lb = spec.pack(0.0, 0.5, [0.0, -2.0, -1e4])
    ub = spec.pack(1.0, 1.5, [1e6, 2.0, 1e4])
    plain = spec.pack([0.2, 0.2], [1.05, 1.05], [1e-3, 0.0, 0.0])
    return spec, noisy_data(spec, truth, 0.02, 1), plain, lb, ub


def test_an_angle_with_one_point_left_does_not_crash_the_start_estimate(plain_case):
    """An angle whose every point but one is NaN: its contrast and offset have no spread
    of the decay to be solved from (NaN), and SciPy's polish raised 'Residuals are not
    finite in the initial point' out of the fit (the fit without the estimate is fine)."""
    spec, y, plain, lb, ub = plain_case
    a = np.asarray(point_coordinates(np.arange(spec.n_points), spec)[0])
    y = y.copy()
    y[np.flatnonzero(a == 0)[1:]] = np.nan
    x, line, _, _ = start_from_data(TwoTimeProblem(spec), InMemoryData({"y": y}, y.size, 4096),
                                    plain, lb, ub)
    assert line.startswith("start estimate from"), line
    assert np.all(np.isfinite(x)) and np.all((x >= lb) & (x <= ub))
    on = NLSQWrapper().fit_two_time(None, spec, plain, (lb, ub), y=y)
    off = NLSQWrapper(options=EngineOptions(start_estimate=False)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    assert on.converged and on.cost <= off.cost * (1 + 1e-9), (on.cost, off.cost)
