"""f8: a parameter held on a bound is released as soon as the step's model pulls it into
the box (issue 14 item 3, opt14 F8)."""

import numpy as np
import pytest
from helpers import make_spec, noisy_data, trf
from scipy.optimize import lsq_linear

from homodyne.optimization.engine import first_step
from homodyne.optimization.problems import NormalEquations

# a linear least-squares problem (residuals b - A x): x0 >= 0, x1 free. From x = 0 the
# gradient of x0 points out of the box (a0·b < 0), but the columns are correlated: with
# x1 moved to its own optimum the pull on x0 points in
A = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
LB, UB = np.array([0.0, -np.inf]), np.array([np.inf, np.inf])


@pytest.mark.parametrize("x_opt", [(1.0, -2.0), (-1.0, 0.0)])
def test_the_first_step_from_a_bound_solves_the_bounded_quadratic_model(x_opt):
    """On a linear problem the undamped step from a point on the bound is the exact
    bounded least-squares solution (SciPy's lsq_linear): x0 released where the optimum
    lies inside (1, -2: the gradient at the start alone held it there, the step went to
    x1 = -4/3 with x0 = 0), held where the optimum lies on the bound (-1, 0 unbounded)."""
    b = A @ np.array(x_opt)
    x = np.zeros(2)
    r = b - A @ x
    ne = NormalEquations(0.5 * float(r @ r), A.T @ A, A.T @ r, A.shape[0])
    assert ne.g[0] < 0  # the gradient at the start points out of the box
    step = first_step(ne, x, LB, UB, 0.0)
    ref = lsq_linear(A, b, bounds=(LB, UB), tol=1e-14).x
    np.testing.assert_allclose(x + step, ref, rtol=1e-10, atol=1e-12)


def _fit_from_the_offset_bound(n_phi: int):
    """(engine result, SciPy TRF result) of opt14 seed 2114 reduced to n_phi angles x 40
    frames (noise seed 0): D0 and alpha fixed at the start's values, D_offset starting on
    its lower bound -1000, the rest 20% off the truth."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec = make_spec("static", n_frames=40, n_phi=n_phi)
    k = spec.n_scaling_sets
    truth = spec.pack(np.linspace(0.14, 0.44, k), np.linspace(0.98, 0.96, k),
                      [731.4, -1.0919, -86.78])
    y = noisy_data(spec, truth, sigma=6.78e-3, seed=0)
    lb = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3])
    ub = spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    p0 = truth * np.random.default_rng(0).uniform(0.8, 1.2, truth.size)
    p0[-3:] = [722.76, -1.0281, -1000.0]
    free = np.ones(p0.size, bool)
    free[-3:-1] = False
    ref = trf(spec, y, p0, lb, ub, max_nfev=500, free=free)
    return NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y,
                                      fixed=["D0", "alpha"]), ref


def test_a_start_on_the_offset_bound_reaches_scipys_optimum():
    """opt14 seed 2114 reduced (static, 3 angles x 40 frames; D0 and alpha fixed, the
    start's D_offset = -1000 on its lower bound, its gradient pointing out). main ec78732
    held D_offset there while the contrasts and offsets went to their optimum at that
    D_offset, a KKT point on the bound: cost 0.08330, "converged but NOT DETERMINED"
    (contrasts ~0.05) in 6 passes. The step's model now releases D_offset at once and the
    fit reaches SciPy's optimum (D_offset -137.5, cost 0.0537225) in 9 passes."""
    result, ref = _fit_from_the_offset_bound(n_phi=3)
    assert ref.status > 0 and ref.x[-1] > -200.0
    assert result.converged and result.status == "converged", result.summary()
    assert result.cost <= ref.cost * (1 + 1e-9), (result.cost, ref.cost, result.summary())
    assert result.parameters[-1] == pytest.approx(ref.x[-1], abs=1e-3 * result.uncertainties[-1])
    assert "D_offset" not in result.at_bounds


def test_a_start_on_a_bound_the_fit_never_left_is_refitted_from_inside():
    """The same case with 2 angles: the contrasts' and offsets' first step already takes
    them to their optimum at D_offset = -1000, where c2 is flat in D_offset (J so large
    that c2 is its baseline off the diagonal): a KKT point, cost 0.057551 in 2 passes,
    "converged but NOT DETERMINED" (main ec78732 and the first-step release alike).
    SciPy's TRF leaves the bound (D_offset -135.5, cost 0.0347138). The fit is now
    refitted from D_offset a quarter of its range inside, and that lower end kept."""
    result, ref = _fit_from_the_offset_bound(n_phi=2)
    assert result.status == "converged", result.summary()
    assert result.cost <= ref.cost * (1 + 1e-9), (result.cost, ref.cost, result.summary())
    assert result.parameters[-1] == pytest.approx(ref.x[-1], abs=1e-3 * result.uncertainties[-1])
    assert any(m.startswith("D_offset started on a bound and never left it: refit from "
                            "D_offset = -500") and "its lower cost kept" in m
               for m in result.messages), result.messages
