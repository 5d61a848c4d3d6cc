"""The data-driven start of J(t) (start_estimate.py): from a plain start (J flat)
its estimate lies near the truth of a synthetic static two-time matrix, and the fit
from it ends at SciPy's optimum, with its pass counted."""

import numpy as np
import pytest
from helpers import assert_matches, chx_window, make_spec, noisy_data, trf

from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.problems import TwoTimeProblem
from homodyne.optimization.settings import EngineOptions
from homodyne.optimization.sources import InMemoryData
from homodyne.optimization.start_estimate import applies, start_from_data

TRUTH_PHYS = [1.0e4, -0.5, 3000.0]


@pytest.fixture(scope="module")
def case():
    spec = make_spec("static", n_frames=80, n_phi=2)
    truth = spec.pack([0.3, 0.25], [1.0, 1.02], TRUTH_PHYS)
    y = noisy_data(spec, truth, sigma=0.02, seed=5)
    lb = spec.pack(0.0, 0.5, [0.0, -2.0, -1e4])
    ub = spec.pack(1.0, 1.5, [1e6, 2.0, 1e4])
    plain = spec.pack([0.2, 0.2], [1.05, 1.05], [1e-3, 0.0, 0.0])
    return spec, truth, y, plain, lb, ub


def test_estimate_recovers_the_power_law_from_a_plain_start(case):
    spec, truth, y, plain, lb, ub = case
    problem = TwoTimeProblem(spec)
    assert applies(problem, plain, lb, ub)
    assert not applies(problem, truth, lb, ub)  # a start with a trend is left alone
    x, line, batches, _ = start_from_data(problem, InMemoryData({"y": y}, y.size, 4096),
                                          plain, lb, ub)
    assert line.startswith("start estimate from") and batches == -(-y.size // 4096)
    d0, alpha, d_off = x[4:]
    assert d0 == pytest.approx(1.0e4, rel=0.2)
    assert alpha == pytest.approx(-0.5, abs=0.1)
    # D_offset trades off against alpha (33% here); J(t) itself within 20% at every frame
    assert d_off == pytest.approx(3000.0, rel=0.4)
    t = spec.frame_times()
    j_true = TRUTH_PHYS[0] * t ** TRUTH_PHYS[1] + TRUTH_PHYS[2]
    np.testing.assert_allclose(d0 * t ** alpha + d_off, j_true, rtol=0.2)
    np.testing.assert_allclose(x[:4], truth[:4], rtol=0.05)


def test_fit_from_the_estimate_ends_at_scipys_optimum(case):
    spec, truth, y, plain, lb, ub = case
    ref = trf(spec, y, truth, lb, ub, max_nfev=200)
    on = NLSQWrapper(options=EngineOptions(start_estimate=True)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    assert on.converged and on.messages[0].startswith("start estimate from")
    dz = (on.parameters - ref.x) / on.uncertainties
    assert np.all(np.abs(dz) < 1e-3), dz
    assert on.cost <= ref.cost + 1e-9
    assert len(on.pass_seconds) == on.passes  # the estimate's pass is one of them
    off = NLSQWrapper(options=EngineOptions(start_estimate=False)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    assert not any(m.startswith("start estimate") for m in off.messages)


def test_measured_window_from_the_estimate_reaches_a_lower_minimum(real_data):
    """CHX frames 1-175 from a plain start: without the estimate the fit ends at the
    logarithmic edge (21 passes, cost 38.538872); from the estimate (J < 0 over the data,
    mirrored to D0 >= 0: the model has |∫J|) it converges in 6 passes at an interior
    minimum 0.007 lower, where SciPy's TRF started from it stays."""
    spec, y, p0, lb, ub = chx_window(real_data, end_frame=175)
    off = NLSQWrapper(options=EngineOptions(start_estimate=False)).fit_two_time(
        None, spec, p0, (lb, ub), y=y)
    on = NLSQWrapper().fit_two_time(
        None, spec, p0, (lb, ub), y=y)
    assert on.converged and on.passes <= 8, on.summary()
    assert on.cost < off.cost - 1e-3, (on.cost, off.cost)
    d0, alpha, d_off = on.parameters[2:]
    t = spec.frame_times()
    assert np.all(d0 * t ** alpha + d_off < 0)
    # and the report says so: the same fit is the positive J with D0, D_offset negated
    assert on.power_law_optimum["alpha"] == (
        f"interior; J(t) < 0 at every frame: c2 depends on |∫J| only, so this is the fit "
        f"J(t) = {-d0:.6g} t^{alpha:.6g} + {-d_off:.6g} > 0 (D0 and D_offset negated)")
    assert "J(t) < 0 at every frame" in on.summary()
    assert "J(t) < 0" not in off.summary()
    ref = trf(spec, y, on.parameters, lb, ub, max_nfev=200)
    assert ref.status > 0 and ref.cost >= on.cost - 1e-9
    assert_matches(on, ref.x)


def test_with_coarse_levels_the_estimate_reads_the_densest_level():
    """Data big enough for coarse levels: the cells come from the densest level (a coarse
    pass, counted in coarse_passes; no extra full pass), and the optimum is the one the
    fit reaches without the estimate."""
    spec = make_spec("static", n_frames=200, n_phi=1)
    truth = spec.pack(0.3, 1.0, TRUTH_PHYS)
    y = noisy_data(spec, truth, sigma=0.02, seed=6)
    lb, ub = spec.pack(0.0, 0.5, [0.0, -2.0, -1e4]), spec.pack(1.0, 1.5, [1e6, 2.0, 1e4])
    plain = spec.pack(0.2, 1.05, [1e-3, 0.0, 0.0])
    opts = dict(coarse_points=2000, coarse_level_factor=4)
    on = NLSQWrapper(options=EngineOptions(start_estimate=True, **opts)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    off = NLSQWrapper(options=EngineOptions(start_estimate=False, **opts)).fit_two_time(
        None, spec, plain, (lb, ub), y=y)
    assert on.messages[0].endswith(f"(on the coarse level of {on.coarse_points:,} points)")
    assert on.converged and off.converged and len(on.pass_seconds) == on.passes
    dz = (on.parameters - off.parameters) / off.uncertainties
    assert np.all(np.abs(dz) < 1e-3), dz


def test_the_config_key_turns_it_off(tmp_path):
    from homodyne.config import validate_config
    from homodyne.pipeline import make_wrapper

    data = tmp_path / "d.h5"
    data.touch()
    raw = {"experimental_data": {"file_path": str(data)},
           "initial_parameters": {"parameter_names": ["D0", "alpha", "D_offset"],
                                  "values": [1000.0, 0.0, 0.0]}}
    assert make_wrapper(validate_config(raw)).options.start_estimate is True
    raw["optimization"] = {"start_estimate": False}
    assert make_wrapper(validate_config(raw)).options.start_estimate is False


# --- with checkpoints: the estimate runs, and a resumed fit repeats the uninterrupted one


def _streamed(spec, y, plain, lb, ub, ck=None, stop_after=None):
    """The case fitted on the streaming tier in batches of 500 points, a checkpoint every
    8 batches in ``ck`` (none without), stopped by the callback after ``stop_after``
    batches. (8 batches per call, as without checkpoints: fewer per call sum the points in
    another order, and the fit ends 1e-12 away, with or without the estimate.)"""
    seen = []

    def cb(batch_idx, params, loss, success):
        seen.append(batch_idx)
        return stop_after is None or len(seen) < stop_after

    config = None if ck is None else {"enable_checkpoints": True, "checkpoint_dir": str(ck),
                                      "checkpoint_frequency": 8,
                                      "checkpoint_min_interval_s": 0.0}
    w = NLSQWrapper(strategy_override="streaming", batch_size=500, callback=cb,
                    checkpoint_config=config)
    return w.fit_two_time(None, spec, plain, (lb, ub), y=y), len(seen)


@pytest.fixture(scope="module")
def uninterrupted(case, tmp_path_factory):
    """The checkpointed fit run through, and its batch count."""
    spec, _, y, plain, lb, ub = case
    return _streamed(spec, y, plain, lb, ub, tmp_path_factory.mktemp("ck_full"))


def _saves_in_order(monkeypatch):
    """Each due save waits for the one before (else one still being written skips the
    next, and which batches a stopped fit saved varies with the load)."""
    from homodyne.optimization.checkpoint_session import CheckpointSession

    due = CheckpointSession.due

    def due_after_the_previous_save(session, batches_done, clock):
        if session._pending is not None:
            session._pending.result()
        return due(session, batches_done, clock)

    monkeypatch.setattr(CheckpointSession, "due", due_after_the_previous_save)


def _files(folder):
    return sorted(p.name for p in folder.glob("homodyne_state_batch_*.h5"))


def test_with_checkpoints_the_estimate_runs_and_a_resumed_fit_is_bit_for_bit(
        case, uninterrupted, tmp_path, monkeypatch):
    """The estimate no longer skipped with checkpoints: the fit ends where it ends without
    them, and one stopped halfway and resumed ends bit for bit there (its passes replayed
    from the recomputed start: at least one whole pass; the estimate's pass counted
    again)."""
    spec, _, y, plain, lb, ub = case
    full, batches = uninterrupted
    assert full.messages[0].startswith("start estimate from") and full.converged
    off, _ = _streamed(spec, y, plain, lb, ub)
    np.testing.assert_array_equal(full.parameters, off.parameters)
    assert full.cost == off.cost and full.passes == off.passes
    _saves_in_order(monkeypatch)
    stopped, _ = _streamed(spec, y, plain, lb, ub, tmp_path, stop_after=batches // 2)
    assert stopped.stop_reason.startswith("stopped by callback") and _files(tmp_path)
    resumed, _ = _streamed(spec, y, plain, lb, ub, tmp_path)
    assert resumed.streaming_diagnostics["resumed_from_batch"] > -(-y.size // 500)
    assert resumed.messages[0] == full.messages[0]
    np.testing.assert_array_equal(resumed.parameters, full.parameters)
    assert resumed.cost == full.cost and resumed.passes == full.passes


def test_a_stop_during_the_estimate_saves_nothing_and_the_rerun_ends_the_same(
        case, uninterrupted, tmp_path, monkeypatch):
    """SIGINT while the estimate reads the data: the fit stops before its first pass with
    no checkpoint (one would hold the plain start's path); the rerun ends bit for bit
    where the uninterrupted fit does."""
    import os
    import signal

    from homodyne.optimization import start_estimate

    spec, _, y, plain, lb, ub = case
    real = start_estimate.cell_sums

    def interrupted(spec_, data, stop=None):
        os.kill(os.getpid(), signal.SIGINT)  # the fit's handler only sets its flag
        return real(spec_, data, stop)

    monkeypatch.setattr(start_estimate, "cell_sums", interrupted)
    stopped, seen = _streamed(spec, y, plain, lb, ub, tmp_path)
    assert stopped.interrupted_by == "SIGINT" and seen == 0 and _files(tmp_path) == []
    assert stopped.stop_reason == ("interrupted by SIGINT during the start estimate, before "
                                   "the first pass: nothing saved; run the same command again "
                                   "to start (or resume) the fit")
    monkeypatch.setattr(start_estimate, "cell_sums", real)
    rerun, _ = _streamed(spec, y, plain, lb, ub, tmp_path)
    np.testing.assert_array_equal(rerun.parameters, uninterrupted[0].parameters)
    assert rerun.passes == uninterrupted[0].passes


def test_a_checkpoint_of_a_path_from_another_start_is_not_resumed(
        case, uninterrupted, tmp_path, monkeypatch, caplog):
    """A checkpoint of this fit (same fingerprint) whose passes started at the plain start
    (as the estimate skipped with checkpoints left them): not resumed, its files deleted,
    and the fit from the estimate ends as the uninterrupted one."""
    import logging

    from homodyne.optimization import driver

    spec, _, y, plain, lb, ub = case
    full, batches = uninterrupted
    monkeypatch.setattr(driver, "applies", lambda *a: False)
    _streamed(spec, y, plain, lb, ub, tmp_path, stop_after=batches // 3)
    assert _files(tmp_path)
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, logger="homodyne"):
        rerun, _ = _streamed(spec, y, plain, lb, ub, tmp_path)
    assert "started from another point than this fit's" in caplog.text
    assert rerun.streaming_diagnostics["resumed_from_batch"] is None
    np.testing.assert_array_equal(rerun.parameters, full.parameters)
    assert rerun.cost == full.cost and rerun.passes == full.passes
