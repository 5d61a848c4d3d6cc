"""What makes a pass cheap without changing a bit: kernels shared by the problems of one
spec, and a call's padding batches (past the data) not computed."""

import numpy as np
from helpers import make_spec, truth_for

from homodyne.model import c2_points
from homodyne.optimization.passes import PassRunner
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
