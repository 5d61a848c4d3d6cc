"""A stationary point off the bounds that is no minimum: a laminar fit started at zero
shear (sinc is even, so every shear derivative vanishes there) steps off it."""

import numpy as np
from helpers import assert_matches

import homodyne.optimization.engine as engine
from homodyne.optimization.nlsq_wrapper import NLSQWrapper


def zero_shear_start(case):
    """The case's start with both shear amplitudes at 0 and bounds that include 0."""
    spec, _, y, p0, lb, ub, _ = case
    names = spec.parameter_names
    ig, io = names.index("gamma_dot_t0"), names.index("gamma_dot_t_offset")
    lb = lb.copy()
    lb[ig] = -1.0
    x0 = p0.copy()
    x0[[ig, io]] = 0.0
    return spec, y, x0, lb, ub


def fit(spec, y, x0, lb, ub):
    return NLSQWrapper().fit_two_time(None, spec, x0, (lb, ub), y=y)


def test_a_start_at_zero_shear_reaches_the_optimum(laminar_case, monkeypatch):
    spec, y, x0, lb, ub = zero_shear_start(laminar_case)
    ref = laminar_case[-1]  # SciPy's TRF from a start off zero
    result = fit(spec, y, x0, lb, ub)
    assert result.converged, result.summary()
    assert_matches(result, ref)
    assert "stationary point that is no minimum" in " ".join(result.messages), result.messages
    # without the probe the fit stops at zero shear, far above the optimum
    monkeypatch.setattr(engine, "escape_stationary", lambda *a: None)
    stuck = fit(spec, y, x0, lb, ub)
    assert stuck.parameters[spec.parameter_names.index("gamma_dot_t0")] == 0.0
    noise_units = (stuck.chi_squared - result.chi_squared) / result.reduced_chi_squared
    assert noise_units > 100, noise_units
    # ... and says so: the shear parameters are not determined there
    shear = {"gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0"}
    assert shear <= set(stuck.undetermined), stuck.summary()


def test_an_ordinary_fit_is_unchanged(laminar_case, monkeypatch):
    # the probe is asked at every converged point; an ordinary fit has no parameter
    # without influence, so it spends no pass and the result is the one without it
    spec, _, y, p0, lb, ub, _ = laminar_case
    real, answers = engine.escape_stationary, []
    monkeypatch.setattr(engine, "escape_stationary",
                        lambda *a: answers.append(real(*a)) or answers[-1])
    with_probe = fit(spec, y, p0, lb, ub)
    assert answers and all(a is None for a in answers)
    monkeypatch.setattr(engine, "escape_stationary", lambda *a: None)
    without = fit(spec, y, p0, lb, ub)
    assert np.array_equal(with_probe.parameters, without.parameters)
    assert with_probe.passes == without.passes
