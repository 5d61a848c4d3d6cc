"""Minima at a kink of the cost (issue 14): a fit that stalls where the cost is not
differentiable (|C_J| where J changes sign) is reported converged at the minimum, and a
stall on a smooth cost (a crawl) is not."""

import numpy as np
import pytest

from homodyne.optimization.engine import solve_lm
from homodyne.optimization.kink import KINK_CHI2, minimum_at_kink
from homodyne.optimization.problems import NormalEquations

TOL = dict(max_iterations=200, step_tol_se=1e-4, gtol=1e-6, ftol=1e-15, initial_damping=1e-3)
N = 2000
T = np.linspace(0.0, 1.0, N)
LB, UB = np.array([-5.0, -5.0]), np.array([5.0, 5.0])


def line_and_kink(pull=0.25, low=-0.5):
    """A line a + b t through N noisy points, and one more point ``low`` fitted by |a|
    (the way one pair of frames sees |C_J[j] - C_J[i]|). The cost is convex: its minimum
    is at a = 0 (the kink) where the line's own pull on a there, ``pull``, is weaker than
    the kink's slope |low|; b then is the line's fit through the origin."""
    rng = np.random.default_rng(1)
    y = T + 0.1 * rng.standard_normal(N)
    b_origin = lambda y: float(T @ y / (T @ T))  # noqa: E731
    # shift the data so that the line's pull on a at (0, b*) is exactly ``pull``
    per_unit = float(np.sum(1.0 - T * T.sum() / (T @ T)))
    y = y + (pull - float(np.sum(y - b_origin(y) * T))) / per_unit

    def evaluate(x):
        r = np.append(y - x[0] - x[1] * T, low - abs(x[0]))
        J = np.vstack([np.stack([np.ones(N), T], 1), [np.sign(x[0]), 0.0]])
        return NormalEquations(0.5 * float(r @ r), J.T @ J, J.T @ r, r.size)

    return evaluate, np.array([0.0, b_origin(y)])


def test_a_minimum_on_a_kink_is_reported_converged_where_the_subgradients_put_it():
    evaluate, kink = line_and_kink()
    st = solve_lm(evaluate, np.array([0.3, 0.5]), LB, UB, **TOL)
    assert st.converged
    assert st.reason.startswith("minimum at a kink of the cost")
    assert "stopped: relative cost change" in st.reason  # the Gauss-Newton test cannot pass
    assert abs(st.x[0]) < 1e-12  # on the kink a = 0
    # b within sqrt(KINK_CHI2) = 0.1 standard errors of the minimum along the kink
    ne = evaluate(kink)
    se_b = np.sqrt(np.linalg.inv(ne.H)[1, 1] * 2 * ne.cost / (N + 1 - 2))
    assert abs(st.x[1] - kink[1]) < np.sqrt(KINK_CHI2) * se_b
    assert 0.0 <= (st.ne.cost - ne.cost) * (N - 1) / ne.cost < KINK_CHI2


def test_without_the_kink_the_same_data_converge_by_the_gauss_newton_test():
    # a pull stronger than the kink's slope: the minimum leaves the kink (a < 0), smooth
    evaluate, _ = line_and_kink(pull=-0.75)
    st = solve_lm(evaluate, np.array([0.3, 0.5]), LB, UB, **TOL)
    assert st.converged and st.reason.startswith("Gauss-Newton step")
    assert st.x[0] < -1e-4


def rosenbrock(x):
    r = -np.array([10 * (x[1] - x[0] ** 2), 1 - x[0]])
    J = np.array([[-20 * x[0], 10.0], [-1.0, 0.0]])
    return NormalEquations(0.5 * float(r @ r), J.T @ J, J.T @ r, 2)


def test_a_crawl_along_a_curved_valley_is_not_called_converged():
    st = solve_lm(rosenbrock, np.array([-1.2, 1.0]), LB, UB, **dict(TOL, max_iterations=6))
    assert not st.converged
    assert st.reason == "maximum iterations (6 per solver stage) reached"
    assert np.linalg.norm(st.x - 1.0) > 0.1  # still on its way to (1, 1)


def test_a_smooth_point_near_the_optimum_is_no_kink_minimum():
    # 0.05 standard errors (Mahalanobis) off a smooth minimum: the step promises
    # 0.0025 < KINK_CHI2, but the probe falls as the model says: no kink claimed (one pass)
    evaluate, _ = line_and_kink(pull=-0.75)
    opt = solve_lm(evaluate, np.array([-0.1, 1.0]), LB, UB, **TOL).x
    ne = evaluate(opt)
    sigma2 = 2 * ne.cost / (N - 1)
    v = np.array([1.0, 1.0])
    x = opt + 0.05 * v / np.sqrt(v @ ne.H @ v / sigma2)
    ne = evaluate(x)
    delta = np.linalg.solve(ne.H, ne.g)
    verdict = minimum_at_kink(evaluate, ne, x, LB, UB, delta, lambda v: np.linalg.solve(ne.H, v))
    assert verdict.description == "" and verdict.evaluations == 1
    # no kink was met: the smooth stall is not continued from here (left to the LM)
    assert verdict.descent is None
    assert 0.0 < 0.5 * float(ne.g @ delta) * (N - 1) / ne.cost < KINK_CHI2


@pytest.mark.parametrize("pull", [0.25, -0.25])
def test_the_kink_test_finds_the_same_minimum_from_either_side(pull):
    evaluate, kink = line_and_kink(pull=pull)
    for a0 in (0.3, -0.3):
        st = solve_lm(evaluate, np.array([a0, 0.5]), LB, UB, **TOL)
        assert st.converged and st.reason.startswith("minimum at a kink")
        assert abs(st.x[0]) < 1e-12


def oblique_kink(c=1.0, low=-2.0, weight=10.0):
    """The line's data and a strong V across the oblique line a = c b (one point fitted
    by weight |a - c b|): the minimum lies on that line, at the line fit's b* through
    a = c b (independent: linear least squares in b alone)."""
    y = 0.3 + T + 0.1 * np.random.default_rng(1).standard_normal(N)

    def evaluate(x):
        u = x[0] - c * x[1]
        r = np.append(y - x[0] - x[1] * T, weight * (low - abs(u)))
        J = np.vstack([np.stack([np.ones(N), T], 1), weight * np.sign(u) * np.array([1.0, -c])])
        return NormalEquations(0.5 * float(r @ r), J.T @ J, J.T @ r, r.size)

    z = c + T
    b = float(z @ y / (z @ z))
    cost = 0.5 * float(np.sum((y - b * z) ** 2)) + 0.5 * (weight * low) ** 2
    return evaluate, b, cost, np.sqrt(2 * cost / (N - 1) / (z @ z))


@pytest.mark.parametrize("c, low, weight", [(1.0, -2.0, 10.0), (0.5, -0.5, 100.0),
                                             (2.0, -5.0, 100.0)])
def test_a_minimum_on_an_oblique_kink_is_found_along_it(c, low, weight):
    # the V across the kink is strong: the Gauss-Newton step from either side promises
    # hundreds of units of chi2, the combination of the two sides' gradients almost none;
    # on the way the damped steps stall on the kink where the combined step still
    # descends, and the fit goes on along it (without that, 2 of these 3 stop NOT
    # converged on the kink, away from its minimum)
    evaluate, b, cost, se_b = oblique_kink(c, low, weight)
    st = solve_lm(evaluate, np.array([2.0, -1.0]), LB, UB, **TOL)
    assert st.converged and st.reason.startswith("minimum at a kink of the cost")
    assert abs(st.x[0] - c * st.x[1]) < 1e-12  # on the kink
    assert abs(st.x[1] - b) < np.sqrt(KINK_CHI2) * se_b
    assert 0.0 <= (st.ne.cost - cost) * (N - 1) / cost < KINK_CHI2
