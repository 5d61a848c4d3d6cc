"""What makes a pass cheap without changing a bit: kernels shared by the problems of one
spec, and a call's padding batches (past the data) not computed."""

import logging

import numpy as np
import pytest
from helpers import bounds_for, make_spec, start_for, truth_for

from homodyne.jaxconf import jax
from homodyne.model import c2_points
from homodyne.optimization.exceptions import NLSQConvergenceError, NLSQNumericalError
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.passes import PassRunner, _wait_for_compilation, compile_ahead
from homodyne.optimization.problems import ChunkLayout, TwoTimeProblem
from homodyne.optimization.sources import HostArrayData, InMemoryData


def _data(spec):
    truth = truth_for(spec)
    y = np.asarray(c2_points(truth, np.arange(spec.n_points), spec))
    return truth, y + 1e-3 * np.cos(np.arange(spec.n_points))


def test_problems_of_one_spec_share_their_compiled_kernels():
    spec = make_spec("static", n_frames=30, n_phi=2)
    layout = ChunkLayout(128, 4)
    a, b = TwoTimeProblem(spec), TwoTimeProblem(spec)
    assert a.chunk_fn(layout) is b.chunk_fn(layout)
    assert a.chunk_fn(layout) is not TwoTimeProblem(spec, validate=False).chunk_fn(layout)
    assert a.chunk_fn(layout) is not a.chunk_fn(ChunkLayout(128, 4, stride=2))
    other = make_spec("static", n_frames=31, n_phi=2)
    assert TwoTimeProblem(other).chunk_fn(layout) is not a.chunk_fn(layout)


def test_padding_batches_are_skipped_and_sums_are_bit_identical():
    """3 batches of data in calls of 8 batches: the 5 padding batches report nothing and
    the sums equal, bit for bit, those of one 3-batch call over the same batches."""
    spec = make_spec("static", n_frames=40, n_phi=2)  # 1,560 points
    truth, y = _data(spec)
    B = 600  # 3 batches, the last one partial
    problem = TwoTimeProblem(spec)
    x = truth * 1.02
    streamed = PassRunner(problem, HostArrayData({"y": y}, spec.n_points, B, 8))
    resident = PassRunner(problem, InMemoryData({"y": y}, spec.n_points, B))
    a, b = streamed.evaluate(x), resident.evaluate(x)
    assert a.n == b.n == spec.n_points
    assert a.cost == b.cost
    np.testing.assert_array_equal(a.H, b.H)
    np.testing.assert_array_equal(a.g, b.g)
    # the call itself: per-batch counts of the 3 data batches, nothing for the padding
    chunk = next(HostArrayData({"y": y}, spec.n_points, B, 8).chunks())
    fn = problem.chunk_fn(ChunkLayout(B, 8))
    _, (n, cost, ok) = fn(x, problem.prepare(x), chunk.columns, 0, 0, chunk.n_valid,
                          np.ones(8, bool))
    np.testing.assert_array_equal(np.asarray(n), [600, 600, 360, 0, 0, 0, 0, 0])
    assert np.all(np.asarray(cost)[:3] > 0) and not np.any(np.asarray(cost)[3:])
    assert np.all(np.asarray(ok))


def test_kernel_compiled_ahead_is_the_one_the_pass_uses(caplog):
    """compile_ahead compiles the pass kernel in the background (no point evaluated); the
    pass then compiles no kernel of its own and gives the same sums as a pass without it."""
    spec = make_spec("static", n_frames=36, n_phi=2)
    truth, y = _data(spec)
    x = truth * 0.98
    problem = TwoTimeProblem(spec)
    data = HostArrayData({"y": y}, spec.n_points, 300, 3)  # a layout no other test uses
    jax.config.update("jax_log_compiles", True)  # globally: the compile runs in a thread
    try:
        with caplog.at_level(logging.WARNING):
            compile_ahead(problem, data, x)
            _wait_for_compilation(data)
            ahead_log = [r.getMessage() for r in caplog.records]
            caplog.clear()
            ahead = PassRunner(problem, data).evaluate(x)
            pass_log = [r.getMessage() for r in caplog.records]
    finally:
        jax.config.update("jax_log_compiles", False)
    assert sum(m.startswith("Compiling jit(run)") for m in ahead_log) == 1
    assert not any(m.startswith("Compiling jit(run)") for m in pass_log)
    plain = PassRunner(problem, HostArrayData({"y": y}, spec.n_points, 300, 3)).evaluate(x)
    assert ahead.cost == plain.cost and ahead.n == plain.n == spec.n_points
    np.testing.assert_array_equal(ahead.H, plain.H)


def test_a_failure_while_compiling_ahead_leaves_the_pass_to_report_it():
    class Broken(TwoTimeProblem):
        def chunk_fn(self, layout):
            raise ValueError("kernel exploded")

    spec = make_spec("static", n_frames=20, n_phi=1)
    truth, y = _data(spec)
    errors = []
    for ahead in (True, False):
        problem, data = Broken(spec), HostArrayData({"y": y}, spec.n_points, 64, 2)
        if ahead:
            compile_ahead(problem, data, truth)
        with pytest.raises(NLSQConvergenceError, match="ValueError") as err:
            PassRunner(problem, data).evaluate(truth)
        errors.append(str(err.value))
    assert errors[0] == errors[1]


def test_a_fit_of_a_new_data_shape_compiles_one_program(caplog):
    """A whole STANDARD fit of a shape no other test uses compiles one program, its pass
    kernel: the per-pass frame integrals are computed on the host and nothing runs as an
    eager JAX op (each would be a compilation of its own, and compiling is most of a
    small fit's first run). Counted at lowering, so a persistent-cache hit counts too."""
    spec = make_spec("laminar_flow", n_frames=43, n_phi=2)
    truth, y = _data(spec)
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING):
            r = NLSQWrapper().fit_two_time(None, spec, start_for(spec, truth),
                                           bounds_for(spec), y=y)
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [m.split(" ")[1] for m in (rec.getMessage() for rec in caplog.records)
                if m.startswith("Compiling ")]
    assert compiled == ["jit(run)"]
    assert r.passes >= 2


@pytest.mark.parametrize("mode,scaling,band", [("laminar_flow", "individual", 0),
                                               ("laminar_flow", "shared", 0),
                                               ("static", "individual", 3)])
def test_pass_sums_equal_the_dense_normal_equations(mode, scaling, band):
    """A pass's JᵀJ, Jᵀr, ½ Σ r² and point count (one Gram matrix per batch, batches
    spanning two angles) equal those of the dense autodiff Jacobian, with weights, NaN
    data points and (static) a left-out diagonal band; a batch that overflows fails."""
    spec = make_spec(mode, n_frames=24, n_phi=3, scaling=scaling, exclude_diagonal_frames=band)
    truth, y = _data(spec)
    y[::37] = np.nan
    w = 0.5 + np.cos(np.arange(spec.n_points)) ** 2
    x = truth * 1.03
    ne = PassRunner(TwoTimeProblem(spec), InMemoryData({"y": y, "w": w}, spec.n_points,
                                                       100)).evaluate(x)
    g = np.arange(spec.n_points)
    i, j = np.triu_indices(spec.n_frames, 1)
    keep = np.isfinite(y) & np.tile(j - i >= band, spec.n_phi)
    J = np.asarray(jax.jit(jax.jacfwd(lambda p: c2_points(p, g, spec)))(x))[keep]
    J = J * w[keep, None]
    r = (y - np.asarray(jax.jit(lambda p: c2_points(p, g, spec))(x)))[keep] * w[keep]
    assert ne.n == keep.sum()
    np.testing.assert_allclose(ne.cost, 0.5 * r @ r, rtol=1e-12)
    scale = np.sqrt(np.outer(np.diag(J.T @ J), np.diag(J.T @ J)))
    np.testing.assert_allclose(ne.H / scale, J.T @ J / scale, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ne.g, J.T @ r, rtol=1e-10,
                               atol=1e-12 * np.sqrt(np.diag(J.T @ J) * (r @ r)).max())
    # one weight that overflows the Gram matrix: that batch (and only it) fails
    w[150] = 1e200
    mon_data = InMemoryData({"y": y, "w": w}, spec.n_points, 100)
    chunk = next(mon_data.chunks())
    fn = TwoTimeProblem(spec).chunk_fn(ChunkLayout(100, mon_data.batches_per_call))
    _, (n, cost, ok) = fn(x, TwoTimeProblem(spec).prepare(x), chunk.columns, 0, 0,
                          chunk.n_valid, np.ones(mon_data.batches_per_call, bool))
    assert np.flatnonzero(~np.asarray(ok)).tolist() == [1]


def test_finite_data_skip_the_per_point_check_with_the_same_bits():
    """In-memory data checked once for NaN/inf: clean data run a kernel without the
    per-point check and give bit-identical sums; data with a NaN (in y or in the
    weights) keep the check and leave that point out; the sums are still checked."""
    spec = make_spec("laminar_flow", n_frames=30, n_phi=2)
    truth, y = _data(spec)
    x = truth * 1.02
    clean = InMemoryData({"y": y}, spec.n_points, 256)
    assert clean.finite
    checked = InMemoryData({"y": y}, spec.n_points, 256)
    checked.finite = False
    a = PassRunner(TwoTimeProblem(spec), clean).evaluate(x)
    b = PassRunner(TwoTimeProblem(spec), checked).evaluate(x)
    assert a.cost == b.cost and a.n == b.n == spec.n_points
    np.testing.assert_array_equal(a.H, b.H)
    np.testing.assert_array_equal(a.g, b.g)
    w = np.ones(spec.n_points)
    w[5] = np.inf
    y_nan = y.copy()
    y_nan[7] = np.nan
    for cols in ({"y": y_nan}, {"y": y, "w": w}):
        data = InMemoryData(cols, spec.n_points, 256)
        assert not data.finite
        ne = PassRunner(TwoTimeProblem(spec), data).evaluate(x)
        assert ne.n == spec.n_points - 1 and np.isfinite(ne.cost)
    # a non-finite model on clean data: the batch sums' check fails the batches it
    # reaches (the first angle's contrast: batches 0 and 1 of 4) and only those
    bad = x.copy()
    bad[0] = np.nan
    runner = PassRunner(TwoTimeProblem(spec), clean)
    ne = runner.evaluate(bad)
    assert [(f["batch"], f["error"]) for f in runner.monitor.failures] == \
        [(0, "non_finite"), (1, "non_finite")]
    assert ne.n == spec.n_points - 512 and np.isfinite(ne.cost)
    bad[1] = np.nan  # both contrasts: every batch fails
    with pytest.raises(NLSQNumericalError, match="Non-finite model values"):
        PassRunner(TwoTimeProblem(spec), clean).evaluate(bad)
