"""A stop in the first pass of a later stage reports the best point of the whole fit so
far, with its cost, inside the box (probe23 N1)."""

import os
import signal

import numpy as np
import pytest
from helpers import c2_points, make_spec, noisy_data, stop_signals_at_default

from homodyne.jaxconf import jnp


@pytest.fixture(scope="module")
def corner_case():
    """A start on the lower corner (probe23 C1's shape, small): internal stage, its
    other quadrant (passes 15..27, every point beyond the user's box), the box point's
    passes (28..31), the finish in user coordinates from the box (32..), the refit."""
    spec = make_spec("static", n_frames=40, n_phi=2)
    truth = spec.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 100.0])
    y = noisy_data(spec, truth, sigma=0.01, seed=0)
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    p0 = spec.pack([0.3, 0.3], [1.0, 1.0], [1.0, -2.0, -1000.0])
    return spec, y, p0, lb, ub


def _cost(spec, y, x):
    """The fit's cost (half the sum of squared residuals), computed independently."""
    return 0.5 * float(np.sum((np.asarray(c2_points(x, jnp.arange(spec.n_points), spec))
                               - y) ** 2))


def _stopped_at(case, batch, ck=None):
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, lb, ub = case
    sent = []

    def stop(b, *_):
        if b >= batch and not sent:
            sent.append(b)
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_signals_at_default():
        cut = NLSQWrapper(checkpoint_config=ck, callback=stop).fit_two_time(
            None, spec, p0, (lb, ub), y=y)
    assert cut.interrupted_by == "SIGTERM" and not cut.converged, cut.summary()
    return cut


@pytest.mark.parametrize("batch", [28, 32])
def test_a_stop_in_a_stages_first_pass_reports_the_best_point_so_far(corner_case, batch):
    """28: the first pass after the other quadrant (the box point's), 32: the first pass of
    the finish in user coordinates. Before: 28 reported the box point of the internal end,
    cost null; 32 that box point with its own cost, 35.4, 8x the start's, as 'best so far'.
    Now the lowest-cost evaluated point inside the box, whose cost is the one reported."""
    spec, y, p0, lb, ub = corner_case
    cut = _stopped_at(corner_case, batch)
    assert np.all((lb <= cut.parameters) & (cut.parameters <= ub)), cut.parameters
    assert np.isfinite(cut.cost), cut.summary()
    np.testing.assert_allclose(cut.cost, _cost(spec, y, cut.parameters), rtol=1e-9)
    assert cut.cost <= _cost(spec, y, p0) * (1 + 1e-12)  # the start: evaluated, in the box


def test_the_resume_after_such_a_stop_equals_the_whole_fit(corner_case, tmp_path):
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, lb, ub = corner_case
    ck = {"enable_checkpoints": True, "checkpoint_dir": str(tmp_path),
          "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0}
    cut = _stopped_at(corner_case, 28, ck)
    np.testing.assert_allclose(cut.cost, _cost(spec, y, cut.parameters), rtol=1e-9)
    resumed = NLSQWrapper(checkpoint_config=ck).fit_two_time(None, spec, p0, (lb, ub), y=y)
    whole = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert resumed.converged and resumed.passes == whole.passes
    np.testing.assert_array_equal(resumed.parameters, whole.parameters)
    assert resumed.cost == whole.cost
