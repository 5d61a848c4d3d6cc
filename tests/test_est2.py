"""Regression tests for the weak items of the data-driven start (start_estimate.py) and
the edge diagnosis that probing left (probe15 W1, W2, W3, W6; probe16 W1)."""

import numpy as np
import pytest
from helpers import plain_start_case

from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.problems import TwoTimeProblem
from homodyne.optimization.settings import EngineOptions
from homodyne.optimization.sources import InMemoryData
from homodyne.optimization.start_estimate import start_from_data


@pytest.fixture(scope="module")
def decaying():
    """A 2-angle static matrix of 60 frames whose J(t) decreases, its usual bounds and a
    plain start (J flat)."""
    return plain_start_case(60)


def _estimate(spec, y, p0, lb, ub):
    """The estimate's start and line, as the fit computes them."""
    x, line, _, _ = start_from_data(TwoTimeProblem(spec), InMemoryData({"y": y}, y.size, 4096),
                                    p0, lb, ub)
    return x, line


def _fit(spec, y, p0, lb, ub, estimate=True):
    return NLSQWrapper(options=EngineOptions(start_estimate=estimate)).fit_two_time(
        None, spec, p0, (lb, ub), y=y)


def test_bounds_that_allow_only_d0_below_zero_get_the_mirror_family(decaying):
    """D0 in [-1e6, -1]: only the mirror J < 0 of the data's decreasing J fits. The grid
    searched J > 0 only where lb(D0) < 0 and started the fit at a J > 0 point on the
    D_offset bound (D0 -3774, alpha 0.41, D_offset 1e4): the same end as without the
    estimate, but in 79 passes against 7."""
    spec, y, plain, lb, ub = decaying
    lb, ub, p0 = lb.copy(), ub.copy(), plain.copy()
    lb[4], ub[4], p0[4] = -1e6, -1.0, -2.0
    x, line = _estimate(spec, y, p0, lb, ub)
    t = spec.frame_times()
    assert np.all(x[4] * t ** x[5] + x[6] < 0), line  # the estimate is in the mirror family
    on, off = _fit(spec, y, p0, lb, ub), _fit(spec, y, p0, lb, ub, estimate=False)
    assert on.messages[0] == line
    assert on.converged and off.converged
    assert on.cost == pytest.approx(off.cost, rel=1e-9)
    assert on.passes <= off.passes, (on.passes, off.passes)


@pytest.mark.parametrize("held, value, suffix", [
    (6, 0.0, "D_offset = 0 (D_offset held)"),  # a pure power law
    (0, 0.3, ""),  # the first angle's contrast held
])
def test_the_estimate_fits_the_free_members_around_a_held_one(decaying, held, value, suffix):
    """A held D_offset skipped the estimate with no message (16 passes from the plain
    start); a held contrast said 'no grid point inside the bounds; plain start kept' (the
    grid solved it linearly and never met the held value). Now the grid and the polish
    fit the free ones: the held value stays, and the fit ends where it ends without the
    estimate, in fewer passes."""
    spec, y, plain, lb, ub = decaying
    lb, ub, p0 = lb.copy(), ub.copy(), plain.copy()
    lb[held] = ub[held] = p0[held] = value
    x, msg = _estimate(spec, y, p0, lb, ub)
    assert msg.startswith("start estimate from") and msg.endswith(suffix), msg
    assert ("held" in msg) == bool(suffix), msg
    assert x[held] == value and np.all((x >= lb) & (x <= ub))
    on, off = _fit(spec, y, p0, lb, ub), _fit(spec, y, p0, lb, ub, estimate=False)
    assert on.messages[0] == msg and on.converged and off.converged
    assert on.cost == pytest.approx(off.cost, rel=1e-9)
    assert on.passes < off.passes, (on.passes, off.passes)


@pytest.mark.parametrize("lo, hi", [(2.5, 4.0), (-9.0, -3.0)])
def test_the_grids_exponents_stay_inside_alphas_bounds(decaying, lo, hi):
    """alpha in [2.5, 4]: the grid's exponents ran linspace(2.5, 2.0), outside alpha's
    bounds (each family's best on alpha = 2.0 or so); now every grid point lies inside
    the bounds, and the estimate ends inside them."""
    from homodyne.optimization.start_estimate import _grid, cell_sums

    spec, y, plain, lb, ub = decaying
    lb, ub, p0 = lb.copy(), ub.copy(), plain.copy()
    lb[5], ub[5], p0[4], p0[5] = lo, hi, 0.0, (lo + hi) / 2
    cells, _ = cell_sums(spec, InMemoryData({"y": y}, y.size, 4096))
    best = _grid(spec, cells, lb, ub)
    assert best
    for _, x in best.values():
        assert lo <= x[5] <= hi and np.all((x >= lb) & (x <= ub)), x
    x, _ = _estimate(spec, y, p0, lb, ub)
    assert lo < x[5] < hi


def test_a_stop_just_after_the_estimate_reports_the_start_as_given_and_the_estimate_unused(
        decaying, monkeypatch):
    """SIGINT landing once the estimate is computed, before the first pass: the result
    (parameters.interrupted.json) held the user's start in its internal-coordinate form
    (alpha nudged off 0, D0 and D_offset moved to match) while its messages listed the
    completed estimate as if taken. Now: the start exactly as given, and the estimate's
    line says it was discarded."""
    import os
    import signal

    from homodyne.optimization import start_estimate

    spec, y, plain, lb, ub = decaying
    real = start_estimate.estimate

    def then_interrupted(*args):
        out = real(*args)
        os.kill(os.getpid(), signal.SIGINT)  # the fit's handler only sets its flag
        return out

    monkeypatch.setattr(start_estimate, "estimate", then_interrupted)
    r = _fit(spec, y, plain, lb, ub)
    assert r.interrupted_by == "SIGINT" and r.passes == 1  # the estimate's read
    np.testing.assert_array_equal(r.parameters, plain)
    assert r.messages[0].startswith("start estimate from")
    assert r.messages[0].endswith("; discarded: the fit stopped before its first pass")
    assert [m for m in r.messages if m.startswith("start estimate")] == r.messages[:1]


def test_a_power_law_at_the_edge_on_no_bound_is_not_said_to_be_held_by_one(tmp_path):
    """Laminar flow on ONE angle (the file `homodyne generate --mode laminar_flow --frames
    50 --angles 30` writes): the shear rate's power law ends at the logarithmic edge with
    gamma_dot_t0 = 1.00003 and nothing at a bound, yet the label said '..., pushed there
    by the bounds: gamma_dot_t0 >= 1e-10 binds: without it the fit heads to (...)' as if
    of the reported point. As for J (test_fix12e), the internal fit's reason is marked as
    its own, and the label says where the reported point lies: inside the bounds."""
    from homodyne.data import open_two_time
    from homodyne.data.synthetic import generate_synthetic
    from homodyne.model import ModelSpec

    phys = [1.0e4, -0.5, 100.0, 1.0e-5, 0.2, 1.0e-6, 5.0]
    spec = ModelSpec(mode="laminar_flow", n_frames=50, phi_deg=(30.0,), q=0.0054, dt=0.1)
    generate_synthetic(tmp_path / "lam.h5", spec, spec.pack(0.3, 1.0, phys))
    y = open_two_time(tmp_path / "lam.h5").read_packed()
    lb = spec.pack(0.0, 0.5, [1e-3, -2.0, -1e5, 1e-10, -2.0, -1.0, -180.0])
    ub = spec.pack(1.0, 1.5, [1e7, 2.0, 1e5, 10.0, 2.0, 1.0, 180.0])
    r = _fit(spec, y, spec.pack(0.1519, 1.1124, phys), lb, ub)
    assert r.at_bounds == [] and r.parameters[5] > 0.5, r.summary()
    label = r.power_law_optimum["beta"]
    assert label.startswith("logarithmic edge, pushed there by the bounds (the internal-"
                            "coordinate fit: gamma_dot_t0 >= 1e-10 binds: without it "), label
    assert label.endswith("); the reported point lies along the edge, where gamma_dot_t0 "
                          "and gamma_dot_t_offset part with the shear rate unchanged, "
                          "inside the bounds"), label
    assert "bounds: gamma_dot_t0 >= 1e-10 binds" not in r.summary()
