"""probe23: a fresh probing round (issue 12) over the fit's long-running paths; each
test fails on main 36bbb56."""

import os
import signal

import numpy as np
import pytest
from helpers import (
    lower_corner_case,
    make_spec,
    noisy_data,
    sigterm_at,
    stop_signals_at_default,
)


def _overflowing_case():
    """Two angles, one of them all 3e38 (probe21's i4.h5 in small): the solver's damping
    overflows and the fit restarts once from a perturbed copy of its best point."""
    spec = make_spec("static", n_frames=40, n_phi=2)
    truth = spec.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 100.0])
    y = np.array(noisy_data(spec, truth, sigma=0.01, seed=0))
    y[y.size // 2:] = 3e38
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    p0 = spec.pack([0.3, 0.3], [1.0, 1.0], [8000.0, -0.4, 80.0])
    return spec, y, p0, (lb, ub)


def test_a_resumed_fit_logs_its_recovery_restart_once(tmp_path):
    """A fit resumed after its recovery restart (perturb_parameters at batch 1150 of
    i4.h5) logged the restart again at the resume's batch: recovery_actions [..1150..,
    ..1168..] after a SIGTERM at 1168, [..1150.., ..1750..] for a rerun over the
    finished fit's checkpoints; the uninterrupted run logs one."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, bounds = _overflowing_case()
    sent = []

    def stop(batch, *_):
        if batch >= 30 and not sent:  # in the restart's second pass
            sent.append(batch)
            os.kill(os.getpid(), signal.SIGTERM)

    def fit(folder, callback=None):
        ck = {"enable_checkpoints": True, "checkpoint_dir": str(tmp_path / folder),
              "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0}
        return NLSQWrapper(checkpoint_config=ck, callback=callback).fit_two_time(
            None, spec, p0, bounds, y=y)

    # (batch 27: the stall's two kink probes, kink.py, come before the restart)
    once = [{"batch": 27, "strategy": "perturb_parameters (5% noise)"}]
    whole = fit("a")
    assert whole.stop_reason.startswith("damping overflow"), whole.stop_reason
    assert whole.recovery_actions == once
    assert fit("a").recovery_actions == once  # over the finished fit's checkpoints
    with stop_signals_at_default():
        assert fit("b", stop).interrupted_by == "SIGTERM"
    resumed = fit("b")
    assert resumed.recovery_actions == once
    np.testing.assert_array_equal(resumed.parameters, whole.parameters)
    assert resumed.passes == whole.passes


def test_a_checkpoint_with_recovery_restarts_is_not_resumed_with_recovery_off(tmp_path):
    """Stopped after its recovery restart, rerun with enable_fault_tolerance: false: the
    resumed fit ended where the uninterrupted one without recovery ends (23 passes) but
    said recovery_actions [perturb_parameters at batch 1150] and counted the restart's
    batches (1,512 vs 1,150 processed). The fault settings shape the path: such a
    checkpoint belongs to another fit."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, bounds = _overflowing_case()
    ck = {"enable_checkpoints": True, "checkpoint_dir": str(tmp_path),
          "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0}
    sent = []

    def stop(batch, *_):
        if batch >= 30 and not sent:
            sent.append(batch)
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_signals_at_default():
        assert NLSQWrapper(checkpoint_config=ck, callback=stop).fit_two_time(
            None, spec, p0, bounds, y=y).interrupted_by == "SIGTERM"
    resumed = NLSQWrapper(checkpoint_config=ck, enable_recovery=False).fit_two_time(
        None, spec, p0, bounds, y=y)
    fresh = NLSQWrapper(enable_recovery=False).fit_two_time(None, spec, p0, bounds, y=y)
    assert resumed.recovery_actions == fresh.recovery_actions == []
    assert resumed.passes == fresh.passes
    np.testing.assert_array_equal(resumed.parameters, fresh.parameters)
    assert resumed.streaming_diagnostics["total_batches_processed"] == \
        fresh.streaming_diagnostics["total_batches_processed"]


def test_a_stop_in_the_internal_stages_stops_at_once_with_a_point_in_the_box(tmp_path):
    """SIGTERM in the other quadrant's internal fit (a start on the lower corner): the
    stop ('interrupted by ...') was not taken for one (only 'stopped ...' was), so the
    fit went on to the next stage's pass and stopped again there: two checkpoints, the
    messages naming batch 486 and the CLI line 489, and parameters.interrupted.json held
    the user's start with no cost. Now the stage ends at the stop: one save, one batch
    named, the stopped point reported (clipped into the box where the internal point
    lies beyond it); the resume equals the uninterrupted fit."""
    import re

    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, (lb, ub) = lower_corner_case()
    ck = {"enable_checkpoints": True, "checkpoint_dir": str(tmp_path),
          "checkpoint_frequency": 1, "checkpoint_min_interval_s": 0}
    cut = sigterm_at(20, lambda stop: NLSQWrapper(  # the other quadrant: passes 15..27
        checkpoint_config=ck, callback=stop).fit_two_time(None, spec, p0, (lb, ub), y=y))
    assert cut.interrupted_by == "SIGTERM", cut.summary()
    saved = re.findall(r"checkpoint saved at batch (\d+)", " ".join(cut.messages))
    assert saved == re.findall(r"checkpoint saved at batch (\d+)", cut.stop_reason) == ["21"]
    assert "the other quadrant" in cut.messages[-1]
    assert np.all((lb <= cut.parameters) & (cut.parameters <= ub))
    assert max(p.name for p in tmp_path.glob("*.h5")) == "homodyne_state_batch_0021.h5"
    resumed = NLSQWrapper(checkpoint_config=ck).fit_two_time(None, spec, p0, (lb, ub), y=y)
    whole = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert resumed.converged and resumed.passes == whole.passes  # (71: with the refit)
    np.testing.assert_array_equal(resumed.parameters, whole.parameters)


def test_a_stop_early_in_the_start_bound_refit_keeps_the_first_end():
    """SIGTERM in the first passes of the refit from inside a start bound (probe21's
    case), checkpoints off ('the best parameters so far are kept'): a stop in its first
    pass reported the user's start with cost NaN, one in its second the refit's start
    (D_offset -500, cost 30.7) - both worse than the first end (cost 0.0576) already
    found. The lower-cost point so far is the result, with the stop as its reason."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec = make_spec("static", n_frames=40, n_phi=2)
    truth = spec.pack([0.14, 0.44], [0.98, 0.96], [731.4, -1.0919, -86.78])
    y = noisy_data(spec, truth, sigma=6.78e-3, seed=0)
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    p0 = truth * np.random.default_rng(0).uniform(0.8, 1.2, truth.size)
    p0[-3:] = [722.76, -1.0281, -1000.0]
    for at in (2, 3):  # the first end took 2 passes of one batch each (0, 1)
        def stop(batch, *_, at=at, sent=[]):  # noqa: B006 (one list per loop round)
            if batch >= at and not sent:
                sent.append(batch)
                os.kill(os.getpid(), signal.SIGTERM)

        with stop_signals_at_default():
            r = NLSQWrapper(callback=stop).fit_two_time(None, spec, p0, (lb, ub), y=y,
                                                        fixed=["D0", "alpha"])
        assert r.interrupted_by == "SIGTERM" and not r.converged, r.summary()
        assert r.stop_reason.startswith("interrupted by SIGTERM"), r.stop_reason
        assert r.cost == pytest.approx(0.0575509, rel=1e-5), (at, r.cost)
        assert r.parameters[-1] == -1000.0


def test_a_stop_in_the_recovery_restarts_first_pass_keeps_the_best_point():
    """SIGTERM in the first pass of the restart from a perturbed copy of the best point
    (i4.h5 at batch 1160): parameters.interrupted.json had cost null - the StopFit left
    the restart's first pass outside the solver and the driver reported the stage's
    start, unevaluated. The best point so far (here the start: no step reduced the
    cost) is kept with its cost."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    spec, y, p0, bounds = _overflowing_case()
    whole = NLSQWrapper().fit_two_time(None, spec, p0, bounds, y=y)
    at = whole.recovery_actions[0]["batch"]  # one batch per pass: the restart's first
    assert at == 27  # after 25 passes of the stage and the stall's two kink probes

    def stop(batch, *_, sent=[]):  # noqa: B006
        if batch >= at and not sent:
            sent.append(batch)
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_signals_at_default():
        cut = NLSQWrapper(callback=stop).fit_two_time(None, spec, p0, bounds, y=y)
    assert cut.interrupted_by == "SIGTERM" and not cut.converged, cut.summary()
    assert cut.stop_reason.startswith("interrupted by SIGTERM"), cut.stop_reason
    # the stage never moved (damping overflow from the start); the restart's end has the
    # same cost (the overflowing angle dominates it) and is the uninterrupted result
    assert cut.cost == whole.cost
    np.testing.assert_array_equal(cut.parameters, p0)
    assert cut.passes == at and cut.recovery_actions == whole.recovery_actions


def test_a_stop_on_a_coarse_level_reports_a_point_inside_the_bounds():
    """SIGTERM on a coarse level of a fit from the lower corner (CHUNKED, coarse_points
    20000 on m.h5: parameters.interrupted.json said D0 = -10503.65, D_offset = -2119.5
    with bounds [1, 1e5] and [-1000, 1000]): the internal coordinates' point, a mirrored
    power law, was mapped back as it was. It is reported clipped into the box, without a
    cost it does not have there."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper
    from homodyne.optimization.settings import EngineOptions

    spec = make_spec("static", n_frames=60, n_phi=2)
    truth = spec.pack([0.3, 0.3], [1.0, 1.0], [1e4, -0.5, 100.0])
    y = noisy_data(spec, truth, sigma=0.01, seed=0)
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    p0 = spec.pack([0.3, 0.3], [1.0, 1.0], [1.0, -2.0, -1000.0])

    def stop(batch, *_, sent=[]):  # noqa: B006
        if batch >= 3 and not sent:  # the coarse level's fourth pass (708 points)
            sent.append(batch)
            os.kill(os.getpid(), signal.SIGTERM)

    with stop_signals_at_default():
        cut = NLSQWrapper(options=EngineOptions(coarse_points=800), callback=stop
                          ).fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert cut.interrupted_by == "SIGTERM" and cut.coarse_passes == 3, cut.summary()
    assert np.all((lb <= cut.parameters) & (cut.parameters <= ub)), cut.parameters[-3:]
    assert not np.isfinite(cut.cost)
