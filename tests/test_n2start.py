"""n2start: a start on the lower corner of the bounds in internal coordinates (probe21 N2,
issue 14 item 3) reaches the optimum, not the bounds' optimum of -J."""

import numpy as np
from helpers import bounds_for, make_spec, noisy_data, trf

from homodyne.jaxconf import jnp
from homodyne.model import c2_points
from homodyne.optimization.coordinates import PowerLawCoordinates
from homodyne.optimization.driver import _mirrored_start
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.problems import TwoTimeProblem

# 2 angles x 100 frames, J = 1e4 t^-0.5 + 100, noise 0.02 (seed 0), the usual bounds
SPEC = make_spec("static", n_frames=100, n_phi=2)
TRUTH = SPEC.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 100.0])
LOWER_CORNER = SPEC.pack([0.15, 0.15], [1.0, 1.0], [1.0, -2.0, -1000.0])
PLAIN = SPEC.pack([0.15, 0.15], [1.0, 1.0], [100.0, 0.0, 0.0])


def _cost(y, p):
    r = np.asarray(c2_points(jnp.asarray(p), jnp.arange(SPEC.n_points), SPEC)) - y
    return 0.5 * float(r @ r)


def test_a_start_on_the_lower_corner_reaches_the_optimum_in_internal_coordinates():
    """From D0 1, alpha -2, D_offset -1000 (J = t^-2 - 1000 < 0) the fit first ended on
    D_offset's bound with J < 0 at every frame, chi2 2.4x the optimum, as SciPy's TRF does
    from there; the refit from inside the start's bounds (its J(t_ref) < 0 mirrored) kept
    the optimum that SciPy's TRF reaches from a plain start, to 1e-3 standard errors (74
    passes). Since lam14b the finish's box point mirrors the other quadrant's J(t_ref) < 0
    too, and the finish reaches that optimum itself (29 passes), no refit needed."""
    y = noisy_data(SPEC, TRUTH, 0.02, 0)
    lb, ub = bounds_for(SPEC)
    r = NLSQWrapper().fit_two_time(None, SPEC, LOWER_CORNER, (lb, ub), y=y)
    ref = trf(SPEC, y, PLAIN, lb, ub)
    corner_ref = trf(SPEC, y, LOWER_CORNER, lb, ub)
    assert ref.status > 0 and corner_ref.status > 0
    assert _cost(y, corner_ref.x) > 2.0 * _cost(y, ref.x)  # SciPy's own corner end
    assert r.converged, r.summary()
    refit = [m for m in r.messages if "started on a bound and never left it" in m]
    assert refit == [] and r.passes <= 40, (r.passes, r.messages)
    assert abs(r.cost - _cost(y, ref.x)) <= 1e-9 * r.cost
    dz = (r.parameters - ref.x) / r.uncertainties
    assert np.all(np.abs(dz) < 1e-3), dz
    assert r.at_bounds == [] and r.undetermined == []


def test_the_refit_starts_from_the_mirror_image_where_j_at_t_ref_is_negative():
    """c2 depends on |∫J|: the mirrored internal start (slope and level negated) is the
    same c2 to rounding, with J(t_ref) > 0; a start with J(t_ref) > 0 is left as it is."""
    lb, ub = bounds_for(SPEC)
    coords = PowerLawCoordinates.for_problem(TwoTimeProblem(SPEC), lb, ub)
    i, a, o = coords.triples[0]
    x = SPEC.pack([0.15, 0.15], [1.0, 1.0], [100.0, -1.0, -800.0])
    space = _mirrored_start(coords, x, lb, ub)
    u = space.free.expand(space.start)
    plain = coords.to_internal(x)
    assert plain[o] < 0 < u[o]
    np.testing.assert_array_equal(u[[i, o]], -plain[[i, o]])
    assert u[a] == x[a]
    c2 = [np.asarray(c2_points(jnp.asarray(p), jnp.arange(SPEC.n_points), SPEC))
          for p in (x, space.user(space.start))]
    np.testing.assert_allclose(c2[1], c2[0], rtol=0, atol=1e-12)
    kept = _mirrored_start(coords, TRUTH, lb, ub)
    np.testing.assert_array_equal(kept.start, coords.to_internal(TRUTH)[kept.free.free])


def test_the_start_bound_refit_runs_in_internal_coordinates():
    """alpha starting on its upper bound 0.5 ends there (2 x 40 frames, J = 2e3 t^0.3 - 50):
    the fit in internal coordinates is refitted once from 0.25 of alpha's range inside,
    through the internal stage, and the better end is SciPy's TRF optimum from that start
    (main 36bbb56 refitted only fits in user coordinates)."""
    spec = make_spec("static", n_frames=40, n_phi=2)
    k = spec.n_scaling_sets
    y = noisy_data(spec, spec.pack(0.3, 1.0, [2e3, 0.3, -50.0]), 0.01, 1)
    lb, ub = bounds_for(spec)
    p0 = spec.pack(0.2, 1.0, [2.4e3, 0.5, -60.0])
    r = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    refit = [m for m in r.messages if "never left it" in m]
    assert len(refit) == 1 and refit[0].startswith("alpha started on a bound"), r.messages
    assert sum(m.startswith("internal coordinates (t_ref") for m in r.messages) == 2, r.messages
    ref = trf(spec, y, p0, lb, ub)
    assert ref.status > 0 and r.converged, r.summary()
    assert abs(r.cost - ref.cost) <= 1e-9 * ref.cost
    dz = (r.parameters - ref.x) / r.uncertainties
    assert np.all(np.abs(dz[: 2 * k + 3]) < 1e-3), dz
