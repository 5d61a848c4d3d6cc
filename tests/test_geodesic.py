"""Geodesic acceleration (opt-in): the LM loop with it reaches scipy's optimum on analytic
problems, and a two-time fit with it reaches the same optimum as without it."""

import numpy as np
import pytest
from helpers import assert_matches
from scipy.optimize import least_squares

from homodyne.jaxconf import jax, jnp
from homodyne.model import c2_points
from homodyne.optimization.engine import EngineOptions, solve_lm
from homodyne.optimization.fixed import FreeSubspace
from homodyne.optimization.geodesic import geodesic_pass
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.passes import PassRunner
from homodyne.optimization.problems import NormalEquations, TwoTimeProblem
from homodyne.optimization.sources import InMemoryData

LM = dict(max_iterations=500, step_tol_se=1e-8, gtol=1e-10, ftol=1e-15, initial_damping=1e-3)


def _rosenbrock():
    """Residuals r = (10 (x1 - x0²), 1 - x0) as data - model: normal equations and
    q = J_mᵀ m''_v (m = -r, r''_v = (-20 v0², 0))."""
    def jm(x):
        return np.array([[20 * x[0], -10.0], [1.0, 0.0]])

    def ne(x):
        r = np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])
        return NormalEquations(0.5 * float(r @ r), jm(x).T @ jm(x), jm(x).T @ r, 2)

    def geodesic(x, v):
        return jm(x).T @ np.array([20 * v[0] ** 2, 0.0])

    return ne, geodesic


def test_geodesic_lm_reaches_scipys_rosenbrock_optimum_and_walks_the_valley_faster():
    ne, geodesic = _rosenbrock()
    lb, ub = np.full(2, -5.0), np.full(2, 5.0)
    x0 = np.array([-1.2, 1.0])
    ref = least_squares(lambda x: -np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]]), x0,
                        bounds=(lb, ub), xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    costs = {}
    for name, geo in (("plain", None), ("geodesic", geodesic)):
        seen: list[float] = []
        st = solve_lm(ne, x0, lb, ub, geodesic=geo, on_iteration=lambda s, seen=seen:
                      seen.append(s.ne.cost), **LM)
        assert st.converged, st.reason
        np.testing.assert_allclose(st.x, ref, atol=1e-8)
        costs[name] = seen
    # three accepted steps along the curved valley: 0.24 with acceleration, 1.35 without
    assert costs["geodesic"][3] < 0.5 * costs["plain"][3], costs
    assert st.geodesic_steps[0] > 0  # accelerated steps were taken (and some refused)


def test_geodesic_lm_on_a_bounded_exponential_decay_matches_scipy():
    t = np.linspace(0.0, 4.0, 200)
    y = 0.8 * np.exp(-1.7 * t) + 0.1 + 0.01 * np.random.default_rng(3).normal(size=t.size)

    def jm(x):
        e = np.exp(-x[1] * t)
        return np.stack([e, -x[0] * t * e, np.ones_like(t)], 1)

    def ne(x):
        r = y - (x[0] * np.exp(-x[1] * t) + x[2])
        return NormalEquations(0.5 * float(r @ r), jm(x).T @ jm(x), jm(x).T @ r, t.size)

    def geodesic(x, v):  # m''_v = 2 va vk (-t e) + vk² a t² e
        e = np.exp(-x[1] * t)
        return jm(x).T @ (-2 * v[0] * v[1] * t * e + v[1] ** 2 * x[0] * t**2 * e)

    lb, ub = np.array([0.0, 0.0, 0.0]), np.array([2.0, 10.0, 0.095])  # the offset binds
    x0 = np.array([0.2, 8.0, 0.0])
    ref = least_squares(lambda x: x[0] * np.exp(-x[1] * t) + x[2] - y, x0, bounds=(lb, ub),
                        xtol=1e-15, ftol=1e-15, gtol=1e-15).x
    st = solve_lm(ne, x0, lb, ub, geodesic=geodesic, **LM)
    assert st.converged, st.reason
    np.testing.assert_allclose(st.x, ref, rtol=1e-7, atol=1e-9)
    assert st.x[2] == ub[2] and st.geodesic_steps[0] > 0


def test_directional_pass_is_j_transpose_the_second_directional_derivative():
    """The pass's q against a dense reference: Jᵀ m''_v by jacfwd and two nested jvps."""
    from helpers import make_spec, start_for, truth_for

    spec = make_spec("laminar_flow", n_frames=24, n_phi=2)
    p0 = start_for(spec, truth_for(spec))
    y = np.ones(spec.n_points)  # q = Jᵀ m''_v does not depend on the data
    data = InMemoryData({"y": y}, y.size, y.size)
    free = FreeSubspace.from_bounds(p0, p0 - 1, p0 + 1)
    geo = geodesic_pass(lambda p: PassRunner(p, data), TwoTimeProblem(spec), free.expand,
                        lambda x: np.eye(p0.size))
    v = 0.01 * p0 * np.random.default_rng(0).normal(size=p0.size)
    g = jnp.arange(spec.n_points)

    def f(p):
        return c2_points(p, g, spec)

    @jax.jit
    def reference(p, v):
        m2 = jax.jvp(lambda p: jax.jvp(f, (p,), (v,))[1], (p,), (v,))[1]
        return jax.jacfwd(f)(p).T @ m2

    ref = np.asarray(reference(jnp.asarray(p0), jnp.asarray(v)))
    assert np.max(np.abs(geo(p0, v) - ref)) < 1e-6 * np.max(np.abs(ref))


@pytest.mark.parametrize("internal", [True, False])
def test_two_time_fit_with_geodesic_acceleration_reaches_the_same_optimum(static_case,
                                                                          internal):
    spec, _, y, p0, lb, ub, ref = static_case
    opts = EngineOptions(geodesic_acceleration=True, internal_coordinates=internal)
    res = NLSQWrapper(options=opts).fit_two_time(None, spec, p0, (lb, ub), y=y)
    plain = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert res.converged, res.stop_reason
    assert_matches(res, ref)
    assert_matches(res, plain.parameters)


def test_geodesic_acceleration_is_refused_where_it_is_not_built():
    x = np.linspace(0, 1, 50)
    with pytest.raises(ValueError, match="two-time fits only"):
        NLSQWrapper(options=EngineOptions(geodesic_acceleration=True)).fit(
            lambda x, a: a * x, x, 2 * x, [1.0], ([0.0], [5.0]))


def test_config_key_switches_it_on_and_defaults_off(tmp_path):
    from homodyne.config import ConfigError, validate_config
    from homodyne.pipeline import make_wrapper

    data = tmp_path / "d.h5"
    data.touch()
    raw = {"experimental_data": {"file_path": str(data)},
           "initial_parameters": {"parameter_names": ["D0", "alpha", "D_offset"],
                                  "values": [1000.0, -1.2, 0.0]}}
    assert make_wrapper(validate_config(raw)).options.geodesic_acceleration is False
    raw["optimization"] = {"geodesic_acceleration": True}
    assert make_wrapper(validate_config(raw)).options.geodesic_acceleration is True
    raw["optimization"] = {"geodesic_acceleration": "yes please"}
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    assert err.value.key == "optimization.geodesic_acceleration"
