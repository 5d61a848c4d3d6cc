"""The LM solver core on small analytic problems, driven straight through ``solve_lm``
and compared with SciPy's TRF; fixed parameters through the API and the config."""

import numpy as np
import pytest
from scipy.optimize import least_squares

from homodyne.jaxconf import jnp
from homodyne.optimization.engine import solve_lm
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.problems import NormalEquations

TOL = dict(max_iterations=200, step_tol_se=1e-6, gtol=1e-10, ftol=1e-15,
           initial_damping=1e-3)


def evaluator(residual, jacobian):
    """One "pass": the normal equations of r(x) = y - f(x) (the engine's sign)."""
    def evaluate(x):
        r, J = residual(x), jacobian(x)
        return NormalEquations(0.5 * float(r @ r), J.T @ J, J.T @ r, r.size)
    return evaluate


def scipy_optimum(residual, jacobian, x0, lb, ub):
    # scipy minimises ½|f|² with f = -r, whose Jacobian is +J (J = -dr/dx here)
    ref = least_squares(lambda x: -residual(x), x0, jac=jacobian, bounds=(lb, ub),
                        method="trf", x_scale="jac", xtol=1e-15, ftol=1e-15, gtol=1e-15,
                        max_nfev=10_000)
    return ref.x, 0.5 * float(ref.fun @ ref.fun)


def standard_errors(H, cost, n, p):
    return np.sqrt(np.diag(np.linalg.pinv(H)) * 2 * cost / max(n - p, 1))


# --- problems: residual r = y - f(x) and J = df/dx (= -dr/dx) -----------------------

def rosenbrock():
    def residual(x):
        return -np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])

    def jacobian(x):
        return np.array([[-20 * x[0], 10.0], [-1.0, 0.0]])

    return residual, jacobian


T = np.linspace(0.0, 4.0, 60)
Y2 = 2.0 * np.exp(-1.3 * T) + 0.5 * np.exp(-0.2 * T) + \
    0.002 * np.random.default_rng(3).standard_normal(T.size)


def two_exponentials():
    def residual(x):
        return Y2 - (x[0] * np.exp(-x[1] * T) + x[2] * np.exp(-x[3] * T))

    def jacobian(x):
        e1, e2 = np.exp(-x[1] * T), np.exp(-x[3] * T)
        return np.stack([e1, -x[0] * T * e1, e2, -x[2] * T * e2], 1)

    return residual, jacobian


def test_bounded_rosenbrock_reaches_scipys_constrained_optimum():
    res, jac = rosenbrock()
    x0, lb, ub = np.array([-1.2, 1.0]), np.array([-2.0, -2.0]), np.array([0.5, 2.0])
    st = solve_lm(evaluator(res, jac), x0, lb, ub, **TOL)
    ref, ref_cost = scipy_optimum(res, jac, x0, lb, ub)
    assert st.x == pytest.approx(ref, abs=1e-7)
    assert st.x[0] == 0.5  # the optimum lies on the upper bound of x0
    assert st.ne.cost == pytest.approx(ref_cost, rel=1e-9)


def test_two_exponential_decays_match_scipy_within_1e_3_se():
    res, jac = two_exponentials()
    x0, lb, ub = np.array([1.0, 2.0, 1.0, 0.1]), np.zeros(4), np.full(4, 10.0)
    st = solve_lm(evaluator(res, jac), x0, lb, ub, **TOL)
    ref, ref_cost = scipy_optimum(res, jac, x0, lb, ub)
    se = standard_errors(st.ne.H, st.ne.cost, T.size, 4)
    assert st.converged, st.reason
    assert np.all(np.abs(st.x - ref) <= 1e-3 * se)
    assert st.x == pytest.approx([2.0, 1.3, 0.5, 0.2], rel=0.05)


def test_rank_deficient_jacobian_keeps_the_determined_combination():
    # f = (a + b) exp(-k t): only a + b and k are determined
    y = 1.5 * np.exp(-0.7 * T)

    def residual(x):
        return y - (x[0] + x[1]) * np.exp(-x[2] * T)

    def jacobian(x):
        e = np.exp(-x[2] * T)
        return np.stack([e, e, -(x[0] + x[1]) * T * e], 1)

    x0, lb, ub = np.array([0.2, 0.3, 0.2]), np.full(3, -5.0), np.full(3, 5.0)
    st = solve_lm(evaluator(residual, jacobian), x0, lb, ub, **TOL)
    assert st.x[0] + st.x[1] == pytest.approx(1.5, abs=1e-9)
    assert st.x[2] == pytest.approx(0.7, abs=1e-9)
    # the null direction (a - b) is left where it started
    assert st.x[0] - st.x[1] == pytest.approx(x0[0] - x0[1], abs=1e-9)


def test_start_on_bound_with_gradient_into_the_box_is_released():
    # the optimum a = 2 lies inside; the start sits on the lower bound a = 0
    res, jac = two_exponentials()
    x0, lb, ub = np.array([0.0, 1.0, 1.0, 0.1]), np.zeros(4), np.full(4, 10.0)
    st = solve_lm(evaluator(res, jac), x0, lb, ub, **TOL)
    ref, ref_cost = scipy_optimum(res, jac, x0, lb, ub)
    assert st.ne.cost == pytest.approx(ref_cost, rel=1e-8)
    assert st.x == pytest.approx(ref, rel=1e-6)


def power_law_on_a_constant():
    """J(t) = D0 t^alpha + c fitted to a noisy constant: at D0 = 0 (its lower bound)
    alpha has no influence, a saddle; SciPy's optimum lies just off it (alpha < 0)."""
    t = np.linspace(1.0, 10.0, 40)
    y = 4.0 + 0.01 * np.random.default_rng(1).standard_normal(t.size)

    def residual(x):
        return y - (x[0] * t ** x[1] + x[2])

    def jacobian(x):
        return np.stack([t ** x[1], x[0] * np.log(t) * t ** x[1], np.ones_like(t)], 1)

    return residual, jacobian


def test_saddle_on_a_bound_is_stepped_off():
    res, jac = power_law_on_a_constant()
    x0, lb, ub = np.array([1.0, 0.5, 0.0]), np.array([0.0, -2.0, -10.0]), \
        np.array([10.0, 2.0, 10.0])
    st = solve_lm(evaluator(res, jac), x0, lb, ub, **dict(TOL, gtol=1e-7))
    ref, ref_cost = scipy_optimum(res, jac, x0, lb, ub)
    # without the saddle test the fit stops at D0 = 0 with a cost 1.6% above SciPy's
    assert st.converged, st.reason
    assert st.ne.cost == pytest.approx(ref_cost, rel=1e-8)
    assert st.x == pytest.approx(ref, rel=1e-5, abs=1e-9)
    assert len(st.saddle_escapes) == 1 and "parameter 1 (without influence)" in st.reason


# --- fixed parameters -------------------------------------------------------------------

def decay(x, a, k, c):
    return a * jnp.exp(-k * x) + c


def test_fixed_parameter_is_held_and_the_rest_match_scipy():
    x = np.linspace(0, 5, 200)
    y = decay(x, 2.0, 0.8, 0.3) + 0.01 * np.random.default_rng(0).standard_normal(x.size)
    names = ["a", "k", "c"]
    w = NLSQWrapper()
    by_name = w.fit(decay, x, y, [1.0, 1.0, 0.25], ([0, 0, 0], [5, 5, 1]),
                    parameter_names=names, fixed=["c"])
    by_bounds = w.fit(decay, x, y, [1.0, 1.0, 0.25], ([0, 0, 0.25], [5, 5, 0.25]),
                      parameter_names=names)
    ref = least_squares(lambda p: decay(x, *p, 0.25) - y, [1.0, 1.0], bounds=([0, 0], [5, 5]),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15)
    for r in (by_name, by_bounds):
        assert r.converged, r.stop_reason
        assert r.fixed == ["c"] and r.parameters[2] == 0.25
        assert r.uncertainties[2] == 0.0 and np.all(r.covariance[2] == 0.0)
        assert np.all(np.isfinite(r.uncertainties)) and np.all(r.uncertainties[:2] > 0)
        assert np.all(np.abs(r.parameters[:2] - ref.x) <= 1e-3 * r.uncertainties[:2])
        assert "c" not in r.at_bounds and "(fixed)" in r.summary()
    # the dof count excludes the fixed parameter
    assert by_name.reduced_chi_squared == pytest.approx(2 * by_name.cost / (x.size - 2))
    with pytest.raises(ValueError, match="fixed: unknown parameter 'd'"):
        w.fit(decay, x, y, [1.0, 1.0, 0.25], parameter_names=names, fixed=["d"])


def test_config_fixed_list_and_equal_bounds_fix_parameters():
    from homodyne.config import ConfigError, validate_config

    raw = {"initial_parameters": {"values": [1000.0, -1.2, 0.0]},
           "parameter_space": {"bounds": [{"name": "alpha", "min": -1.2, "max": -1.2}],
                               "fixed": ["D_offset"]}}
    cfg = validate_config(raw, require_data=False)
    assert cfg.fixed == ["D_offset"] and cfg.bound("alpha") == (-1.2, -1.2)
    raw["parameter_space"]["fixed"] = ["beta"]
    with pytest.raises(ConfigError, match="'beta' is not a parameter of static mode"):
        validate_config(raw, require_data=False)


def test_two_time_fit_with_fixed_d_offset_and_contrast_matches_scipy():
    from helpers import make_spec, truth_for

    from homodyne.jaxconf import jax
    from homodyne.model import c2_points

    spec = make_spec("static", n_frames=80, n_phi=3)
    truth = truth_for(spec)
    g = jnp.arange(spec.n_points)
    y = np.asarray(c2_points(truth, g, spec))
    y = y + np.random.default_rng(2).normal(0, 0.01, y.size)
    lb = np.array([0.0] * 3 + [0.5] * 3 + [1.0, -2.0, -1000.0])
    ub = np.array([1.0] * 3 + [1.5] * 3 + [1e5, 0.5, 1000.0])
    p0 = truth * np.array([1.0] * 6 + [1.25, 0.8, 1.0])
    r = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y,
                                   fixed=["contrast", "D_offset"])
    held = np.array([True] * 3 + [False] * 5 + [True])
    assert r.fixed == ["contrast[0]", "contrast[1]", "contrast[2]", "D_offset"]
    assert np.array_equal(r.parameters[held], p0[held]) and np.all(r.uncertainties[held] == 0)
    free = ~held

    def model(q):
        return c2_points(jnp.asarray(p0).at[np.flatnonzero(free)].set(q), g, spec)

    jac = jax.jit(jax.jacfwd(model))
    ref = least_squares(lambda q: np.asarray(model(q)) - y, p0[free],
                        jac=lambda q: np.asarray(jac(q)), bounds=(lb[free], ub[free]),
                        method="trf", x_scale="jac", ftol=1e-15, xtol=1e-15, gtol=1e-15)
    assert r.converged, r.summary()
    assert np.all(np.abs(r.parameters[free] - ref.x) <= 1e-3 * r.uncertainties[free])


def test_two_time_start_exactly_on_bounds_reaches_scipys_optimum(static_case):
    # alpha on its lower bound and D_offset on its upper one, both with gradients into
    # the box: released at once, the fit ends where SciPy's TRF does from the same start
    from helpers import assert_matches, scipy_reference

    spec, truth, y, p0, lb, ub, _ = static_case
    start = p0.copy()
    start[-2], start[-1] = lb[-2], ub[-1]
    r = NLSQWrapper().fit_two_time(None, spec, start, (lb, ub), y=y)
    assert r.converged, r.summary()
    assert not r.at_bounds and not r.not_moved
    assert_matches(r, scipy_reference(spec, y, start, lb, ub))
