"""The paired-pass overhead estimate (homodyne/benchmarks/overhead.py): its interval of
the median, and the separately compiled kernels it compares (same sums, own program)."""

import numpy as np
from helpers import make_spec, truth_for

from homodyne.benchmarks.overhead import _own_kernels, _paired, median_ci
from homodyne.optimization.passes import PassRunner
from homodyne.optimization.problems import ChunkLayout, TwoTimeProblem
from homodyne.optimization.sources import InMemoryData


def test_median_interval_is_the_binomial_order_statistics():
    v = np.random.default_rng(3).permutation(np.arange(1.0, 101.0))
    # n = 100: k = floor((100 - 1.96 * 10) / 2) = 40 -> the 41st and 60th smallest
    assert median_ci(v) == (41.0, 60.0)
    assert median_ci([5.0, 1.0, 3.0]) == (1.0, 5.0)  # too few values: the whole range
    lo, hi = median_ci(np.random.default_rng(4).normal(0.01, 0.02, 2000))
    assert lo < 0.01 < hi and hi - lo < 0.004


def test_own_kernels_give_the_same_sums_from_a_program_of_their_own():
    spec = make_spec("static", n_frames=33, n_phi=2)
    truth = truth_for(spec)
    y = 1.1 + 1e-3 * np.cos(np.arange(spec.n_points))  # any data: both sum the same
    data = InMemoryData({"y": y}, spec.n_points, 200)
    shared, own = TwoTimeProblem(spec), _own_kernels(TwoTimeProblem(spec))
    layout = ChunkLayout(200, data.batches_per_call)
    assert own.chunk_fn(layout) is not shared.chunk_fn(layout)
    assert own.chunk_fn(layout) is own.chunk_fn(layout)
    runners = {"shared": PassRunner(shared, data), "own": PassRunner(own, data)}
    times = _paired(runners, 2, truth * 1.01)
    assert set(times) == {"cpu", "wall"} and all(len(t) == 2 for t in times["cpu"].values())
    a, b = (r.monitor.passes[-1].ne for r in runners.values())
    assert a.cost == b.cost and a.n == b.n == spec.n_points
    np.testing.assert_array_equal(a.H, b.H)
