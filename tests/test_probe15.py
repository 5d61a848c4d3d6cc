"""Regression tests for probe15's findings (issue 12, a fresh round of probing this
session's new code: the data-driven start, poor_fit, the production summary)."""

import numpy as np
import pytest
from helpers import plain_start_case

from homodyne.model import point_coordinates
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.problems import TwoTimeProblem
from homodyne.optimization.settings import EngineOptions
from homodyne.optimization.sources import InMemoryData
from homodyne.optimization.start_estimate import start_from_data


@pytest.fixture(scope="module")
def plain_case():
    """A 2-angle static matrix and a plain start (J flat) the estimate applies to."""
    return plain_start_case(40)


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


def _production_results(folder, power_law_optimum):
    """Minimal parameters.json of the three production fits (the fields the summary
    reads), the CHX one with the measured fit's J < 0 (D0 0.009, D_offset -0.13)."""
    import json

    def by_name(names):
        return {n: {"value": v, "uncertainty": 0.01} for n, v in names.items()}

    chx = {"data": "test_g2.npy", "n_points": 11175, "units": "frames", "converged": True,
           "status": "converged", "stop_reason": "converged", "reduced_chi_squared": 1e-3,
           "rate_at_first_and_last_frame": [0.1205, 0.0235],
           "rate_err_at_first_and_last_frame": [0.002, 0.001], "alpha_window": [0.85, 1.15],
           "n_compared": 5, "median_abs_z": 1.0, "fraction_within_2_sigma": 0.8,
           "parameters_by_name": by_name({"contrast": 0.2, "offset": 1.0, "D0": 0.00898,
                                          "alpha": 0.4214, "D_offset": -0.1295}),
           "power_law_optimum": power_law_optimum}
    aging = {"files": ["a", "b"], "ages_s": [10.0, 20.0], "min_tau_s": 0.1, "max_tau_s": 9,
             "n_points": 100, "error_model": "reported", "converged": True,
             "stop_reason": "converged", "reduced_chi_squared": 1.0,
             "q_scaling_slope_median": 2.0, "single_mode_note": "fine", "per_age": [],
             "parameters_by_name": by_name({"offset": 1.0, "D0": 1.0, "alpha": -0.5,
                                            "D_offset": 0.0})}
    lam = {"data": "lam.h5", "n_points": 100, "strategy": "STANDARD", "converged": True,
           "max_abs_z": 1.0, "truth_vs_fit": []}
    dirs = []
    for name, p in (("chx", chx), ("aging", aging), ("laminar", lam)):
        (folder / name).mkdir()
        (folder / name / "parameters.json").write_text(json.dumps(p))
        dirs.append(folder / name)
    return dirs


def test_the_production_summary_says_when_the_chx_fit_has_j_negative(tmp_path):
    """The CHX production fit ends at J(t) < 0 at every frame (D0 0.009, alpha 0.42,
    D_offset -0.13): summary.md showed that table under 'rate q²·J(t) falls from 0.12',
    a positive J the table's parameters contradict, without the fit's own note that
    this is the mirror of a positive J (c2 depends on |∫J| only)."""
    from homodyne.production.report import write_fit_summary

    note = ("J(t) < 0 at every frame: c2 depends on |∫J| only, so this is the fit "
            "J(t) = -0.00898 t^0.4214 + 0.1295 > 0 (D0 and D_offset negated)")
    text = write_fit_summary(tmp_path / "s.md", *_production_results(
        tmp_path, {"alpha": f"interior; {note}"})).read_text()
    assert "- rate q²·|J(t)| falls from 0.1205 ± 0.002 at frame 1 to 0.0235 ± 0.001" in text
    assert f"- {note}." in text
    plain = tmp_path / "plain"
    plain.mkdir()
    text = write_fit_summary(plain / "s.md", *_production_results(
        plain, {"alpha": "interior"})).read_text()
    assert "J(t) < 0" not in text and "rate q²·|J(t)| falls from" in text


def test_a_poor_fit_from_restarts_is_not_told_to_try_restarts():
    """A fit with sigma 10x too small is poor_fit; after 4 starts its first line said
    'try optimization.restarts' as to a single start: it names the starts instead."""
    import jax.numpy as jnp

    x = np.linspace(0, 5, 400)
    y = 2 * np.exp(-0.7 * x) + 0.1 + np.random.default_rng(0).normal(0, 0.01, x.size)

    def f(x, a, b, c):
        return a * jnp.exp(-b * x) + c

    sigma, bounds = np.full(x.size, 0.001), ([0, 0, -1], [10, 10, 1])
    many = NLSQWrapper().fit(f, x, y, [1, 1, 0], bounds=bounds, sigma=sigma, restarts=4)
    assert many.status == "poor_fit" and many.restarts["starts"] == 4
    assert "; the best of 4 starts: a wrong model or a sigma too small" in many.goodness_of_fit
    assert "try optimization.restarts" not in many.summary()
    one = NLSQWrapper().fit(f, x, y, [1, 1, 0], bounds=bounds, sigma=sigma)
    assert one.status == "poor_fit" and one.goodness_of_fit.endswith("try optimization.restarts")
