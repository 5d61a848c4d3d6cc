"""opt14: cases of the randomised comparison against SciPy's TRF where the engine reached
a different (higher) optimum; each reproduces one failure class of notes/opt14_findings.md."""

import pytest
from helpers import assert_matches, make_spec, noisy_data, trf

from homodyne.optimization.nlsq_wrapper import NLSQWrapper

STATIC_LB = [1.0, -2.0, -1000.0]
STATIC_UB = [1e5, 0.5, 1000.0]


def _cost_matches(result, ref):
    assert result.cost <= ref.cost * (1 + 1e-9), (result.cost, ref.cost, result.summary())


@pytest.mark.parametrize("n_frames, n_phi, sigma, seed", [(60, 2, 0.008, 2), (70, 3, 0.003, 4)])
def test_offset_crossing_its_bound_restarts_at_the_same_level_and_slope(n_frames, n_phi,
                                                                         sigma, seed):
    """J near the logarithmic edge with D_offset just inside its bound: the internal fit
    (offset free) ends with D_offset ~ -5e4, far outside [-1e3, 1e3]. Clipping the offset
    alone moved J by the whole excess and the user-coordinate finish stopped at
    alpha = -2 or 0.5 with chi2 up to 1.3x SciPy's (reported converged); the box point
    with the offset on its bound at the same J(t_r) and dJ/dln t is SciPy's optimum."""
    spec = make_spec("static", n_frames=n_frames, n_phi=n_phi, scaling="shared")
    truth = spec.pack(0.184, 0.959, [4600.0, -0.0089, -907.0])
    y = noisy_data(spec, truth, sigma=sigma, seed=seed)
    lb, ub = spec.pack(0.0, 0.5, STATIC_LB), spec.pack(1.0, 1.5, STATIC_UB)
    p0 = spec.pack(0.15, 1.0, [5000.0, -0.008, -800.0])
    ref = trf(spec, y, p0, lb, ub)
    assert ref.status > 0 and ref.x[4] == pytest.approx(lb[4], rel=1e-12)
    result = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert result.converged, result.summary()
    _cost_matches(result, ref)
    assert_matches(result, ref.x)
    assert "D_offset" in result.at_bounds


def test_start_on_a_bound_corner_tries_the_other_trend():
    """From the corner D0 = 1e5, alpha = -2, D_offset = -1e3 (J decreasing) with the truth
    increasing (alpha = 0.46): the quadrant of the start's trend ends with alpha held at
    the logarithmic edge, a local minimum with offsets dragged onto their bound (chi2
    350x SciPy's, reported converged). The other quadrant, fitted from the start too,
    holds SciPy's optimum (opt14 comparison, seed 101)."""
    spec = make_spec("static", n_frames=50, n_phi=6)
    truth = spec.pack([0.2117, 0.4032, 0.3161, 0.1824, 0.4652, 0.4412],
                      [1.0473, 0.9725, 1.0305, 1.0181, 0.9971, 0.9531], [1577.7, 0.4642, 273.75])
    y = noisy_data(spec, truth, sigma=3.3e-4, seed=0)
    lb, ub = spec.pack(0.0, 0.5, STATIC_LB), spec.pack(1.0, 1.5, STATIC_UB)
    p0 = spec.pack([0.1900, 0.3605, 0.2668, 0.1479, 0.3880, 0.5283],
                   [1.0309, 1.0328, 1.0102, 0.8745, 1.1090, 0.9927], [1e5, -2.0, -1000.0])
    ref = trf(spec, y, p0, lb, ub)
    assert ref.status > 0
    result = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert result.converged and not result.at_bounds, result.summary()
    _cost_matches(result, ref)
    assert_matches(result, ref.x)


def test_the_mirror_image_of_an_edge_end_continues_into_the_other_quadrant():
    """From 10x off with the wrong trend (D0 = 1e5, alpha = 0.39, D_offset = -1e3; the
    truth decreases, alpha = -0.11) the increasing quadrant ends at its logarithmic edge
    with J < 0 (level -1.4e4, slope +1.7e3); the model has |∫J|, so -J is the same fit,
    and it lies in the decreasing quadrant's corner: fitted from there, the other quadrant
    reaches SciPy's optimum. Main's finish ended at D0 = 1, alpha = -1.49 with chi2
    8,600x SciPy's, reported converged; fitting the other quadrant from the flat J of the
    start took 32 passes here and ended at that same point on the comparison's noise
    (opt14 comparison, v3 seed 2115)."""
    spec = make_spec("static", n_frames=60, n_phi=4, scaling="shared")
    truth = spec.pack(0.3256, 0.9571, [16373.0, -0.1099, -999.0])
    y = noisy_data(spec, truth, sigma=6e-4, seed=0)
    lb, ub = spec.pack(0.0, 0.5, STATIC_LB), spec.pack(1.0, 1.5, STATIC_UB)
    p0 = spec.pack(0.2846, 0.9267, [1e5, 0.3905, -1000.0])
    ref = trf(spec, y, p0, lb, ub)
    assert ref.status > 0
    result = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert result.converged, result.summary()
    _cost_matches(result, ref)
    assert_matches(result, ref.x)
    assert result.passes <= 20, result.summary()


def test_internal_optimum_outside_the_box_is_refitted_on_the_bound_it_crossed():
    """Laminar, 6 angles x 20 frames, shared scaling, plain start, J nearly flat (opt14 v3
    seed 2042, reduced): the internal fit ends with J(t_ref) < 0 and D0 = 0 (-J is the
    same fit), outside the user's box. Finishing in user coordinates from the clipped box
    point stopped at 200 passes, NOT converged, with D0 = 1 and D_offset = -1000 on their
    bounds, alpha = -1.42 and chi2 308x SciPy's (the full case: alpha = -2, chi2 450x, reported
    converged); refitted with the crossed amplitude and offset held on their bounds (the
    mirror image, J > 0) and then released, it reaches SciPy's optimum."""
    spec = make_spec("laminar_flow", n_frames=20, n_phi=6, scaling="shared")
    truth = spec.pack(0.18, 1.0, [2180.0, -0.02, 291.8, 6.15e-4, -0.729, -5.82e-5, -19.13])
    y = noisy_data(spec, truth, sigma=1e-4, seed=0)
    lb = spec.pack(0.0, 0.5, STATIC_LB + [1e-6, -2.0, -1e-2, -30.0])
    ub = spec.pack(1.0, 1.5, STATIC_UB + [1.0, 2.0, 1e-2, 30.0])
    p0 = spec.pack(0.09, 1.0, [100.0, 0.0, 0.0, 1e-4, 0.0, 0.0, 0.0])
    ref = trf(spec, y, p0, lb, ub)
    assert ref.status > 0
    result = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert result.converged, result.summary()
    assert any("crossed a bound: refit with" in m for m in result.messages), result.messages
    _cost_matches(result, ref)
    assert_matches(result, ref.x)


def test_a_finish_from_the_predicted_edge_point_that_fails_is_redone_from_the_box():
    """Laminar, 1 angle x 50 frames, plain start (opt14 v3 seed 2038, other noise): the
    shear's held fit ends on its way to the logarithmic edge and the finish in user
    coordinates started from the edge point the held end's sums predict; here that
    extrapolation led the finish astray (its iteration cap at 295x SciPy's cost). Where
    it does not converge the finish is redone from the plain box point, which reaches
    SciPy's cost (also at its cap: honestly NOT converged). Since lam14b the box point of
    the internal end (stopped at its cap, the shear's level at t_ref < 0) mirrors that level
    first, and the one finish converges below SciPy's cost (0.012917 vs 0.016231, 140
    passes; before 0.016231 NOT converged, 241); the redo keeps its unit test in
    test_fix12e."""
    spec = make_spec("laminar_flow", n_frames=50, n_phi=1)
    truth = spec.pack(0.4932, 0.9519, [950.76, -1.0105, -3.3845, 2.2e-3, -0.4263, 2.018e-4,
                                        14.474])
    y = noisy_data(spec, truth, sigma=0.00466, seed=3)
    p0 = spec.pack(0.2466, 1.0, [100.0, 0.0, 0.0, 1e-4, 0.0, 0.0, 0.0])
    lb = spec.pack(0.0, 0.5, STATIC_LB + [1e-6, -2.0, -1e-2, -30.0])
    ub = spec.pack(1.0, 1.5, STATIC_UB + [1.0, 2.0, 1e-2, 30.0])
    ref = trf(spec, y, p0, lb, ub)
    assert ref.status > 0
    result = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    finishes = sum(m.startswith("user coordinates") for m in result.messages)
    assert finishes == 1 and result.converged, result.messages
    _cost_matches(result, ref)
