"""The engine: recovery of known parameters, exactness against scipy, every tier."""

import numpy as np
import pytest
from helpers import (
    assert_matches,
    bounds_for,
    make_spec,
    noisy_data,
    scipy_reference,
    start_for,
    truth_for,
)
from scipy.optimize import least_squares

from homodyne.data import generate_synthetic, open_two_time
from homodyne.jaxconf import jax, jnp
from homodyne.model import c2_points
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.strategy import DatasetSizeStrategy, OptimizationStrategy


def assert_recovers(result, truth, n_se=3.0):
    z = (result.parameters - truth) / result.uncertainties
    assert np.all(np.isfinite(z)), result.summary()
    assert np.all(np.abs(z) < n_se), f"{z}\n{result.summary()}"


@pytest.mark.parametrize("case", ["static_case", "laminar_case"])
def test_recovers_truth_and_matches_scipy(case, request):
    spec, truth, y, p0, lb, ub, ref = request.getfixturevalue(case)
    assert spec.n_points >= 100_000
    result = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert result.converged, result.summary()
    assert not result.not_moved and not result.at_bounds
    assert_recovers(result, truth)
    assert_matches(result, ref)
    # the reported uncertainties are the scaled inverse of JᵀJ: check against scipy's J
    g = jnp.arange(spec.n_points)
    J = np.asarray(jax.jacfwd(lambda p: c2_points(p, g, spec))(result.parameters))
    r = y - np.asarray(c2_points(result.parameters, g, spec))
    chi2r = r @ r / (y.size - truth.size)
    se = np.sqrt(np.diag(np.linalg.inv(J.T @ J)) * chi2r)
    np.testing.assert_allclose(result.uncertainties, se, rtol=1e-6)
    assert result.reduced_chi_squared == pytest.approx(chi2r, rel=1e-9)


@pytest.mark.parametrize("tier", ["standard", "large", "chunked", "streaming"])
def test_every_tier_reaches_the_same_optimum(static_case, tier, tmp_path):
    spec, truth, y, p0, lb, ub, ref = static_case
    wrapper = NLSQWrapper(strategy_override=tier, batch_size=8192)
    result = wrapper.fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert result.strategy == tier.upper()
    assert_matches(result, ref)


def test_streaming_from_disk_matches_scipy(tmp_path):
    spec = make_spec("laminar_flow", n_frames=120, n_phi=4)
    truth = truth_for(spec)
    info = generate_synthetic(tmp_path / "d.h5", spec, truth, noise_sigma=0.01, seed=5,
                              dtype="float64", block_rows=32)
    src = open_two_time(info.path)
    y = src.read_packed()
    lb, ub = bounds_for(spec)
    p0 = start_for(spec, truth)
    ref = scipy_reference(spec, y, p0, lb, ub)
    wrapper = NLSQWrapper(strategy_override="streaming", batch_size=3000,
                          options=EngineOptions(coarse_points=5_000))
    result = wrapper.fit_two_time(src, src.model_spec(mode="laminar_flow"), p0, (lb, ub))
    assert result.strategy == "STREAMING" and result.coarse_passes > 0
    assert_matches(result, ref)
    assert_recovers(result, truth)


def test_batch_size_does_not_change_the_result(static_case):
    spec, truth, y, p0, lb, ub, ref = static_case
    a = NLSQWrapper(batch_size=1000).fit_two_time(None, spec, p0, (lb, ub), y=y)
    b = NLSQWrapper(batch_size=100_500).fit_two_time(None, spec, p0, (lb, ub), y=y)
    dz = (a.parameters - b.parameters) / a.uncertainties
    assert np.all(np.abs(dz) < 1e-4), dz


def test_coarse_to_fine_uses_few_full_passes(static_case):
    spec, truth, y, p0, lb, ub, ref = static_case
    opts = EngineOptions(coarse_points=10_000)
    result = NLSQWrapper(options=opts).fit_two_time(None, spec, p0, (lb, ub), y=y)
    assert 5_000 <= result.coarse_points <= 10_000 and result.coarse_passes > 0
    assert result.passes <= 5, result.summary()
    assert_matches(result, ref)


def test_shared_scaling_recovers_truth():
    spec = make_spec("static", n_frames=300, n_phi=3, scaling="shared")
    truth = truth_for(spec)
    y = noisy_data(spec, truth, seed=3)
    lb, ub = bounds_for(spec)
    result = NLSQWrapper().fit_two_time(None, spec, start_for(spec, truth), (lb, ub), y=y)
    assert_recovers(result, truth)


def test_generic_jax_model_matches_scipy():
    rng = np.random.default_rng(0)
    x = np.linspace(0.1, 10, 50_000)
    truth = np.array([0.3, 1.0, 0.7, 1.3])

    def model(x, a, b, k, p):
        return b + a * jnp.exp(-((k * x) ** p))

    y = np.asarray(model(x, *truth)) + rng.normal(0, 0.01, x.size)
    p0 = truth * 1.2
    bounds = ([0, 0, 0.01, 0.2], [2, 2, 10, 3])
    res = NLSQWrapper().fit(model, x, y, p0, bounds)
    ref = least_squares(lambda p: np.asarray(model(x, *p)) - y, p0, bounds=bounds,
                        x_scale="jac", ftol=1e-15, xtol=1e-15, gtol=1e-15)
    assert_matches(res, ref.x)
    assert_recovers(res, truth)


def test_numpy_model_falls_back_with_one_warning():
    x = np.linspace(0.1, 5, 20_000)
    y = 1.0 + 0.5 * np.exp(-0.8 * x) + np.random.default_rng(1).normal(0, 0.01, x.size)

    def model(x, a, b, k):
        return b + a * np.exp(-k * x)

    with pytest.warns(RuntimeWarning, match="cannot be traced by JAX") as rec:
        res = NLSQWrapper().fit(model, x, y, [0.4, 0.9, 1.0], ([0, 0, 0], [2, 2, 5]))
    assert len(rec) == 1
    ref = least_squares(lambda p: model(x, *p) - y, [0.4, 0.9, 1.0], bounds=([0, 0, 0], [2, 2, 5]),
                        ftol=1e-15, xtol=1e-15, gtol=1e-15)
    assert np.all(np.abs((res.parameters - ref.x) / res.uncertainties) < 1e-2)


def test_guide_python_example_runs_scaled_to_1m_points():
    wrapper = NLSQWrapper(enable_large_dataset=True, enable_recovery=True)
    n_points = 1_000_000
    xdata = np.arange(n_points)
    ydata = np.random.default_rng(0).standard_normal(n_points)
    p0 = np.array([0.5, 1.0, 1000.0, -1.2, 0.0])
    bounds = (np.array([0.0, 0.0, 1.0, -2.0, -1000.0]),
              np.array([1.0, 2.0, 100000.0, 0.5, 1000.0]))

    def model_func(xdata, contrast, offset, D0, alpha, D_offset):
        return offset + contrast * np.exp(-D0 * (xdata**alpha) + D_offset)

    with pytest.warns(RuntimeWarning):
        result = wrapper.fit(model_func=model_func, xdata=xdata, ydata=ydata, p0=p0,
                             bounds=bounds, method="trf")
    assert result.strategy == "LARGE"
    assert result.streaming_diagnostics["batch_success_rate"] == 1.0
    # ydata is pure noise: the contrast collapses onto its lower bound, the best offset is
    # then the sample mean, and the decay parameters are undetermined -- the result says
    # so (infinite uncertainties) instead of reporting a fake standard error
    assert result.parameters[0] == 0.0 and "p0" in result.at_bounds
    assert result.parameters[1] == pytest.approx(ydata.mean(), abs=1e-9)
    assert {"p2", "p3", "p4"} <= set(result.undetermined)
    assert np.all(np.isinf(result.uncertainties[2:]))


def test_bad_arguments_are_named():
    w = NLSQWrapper()
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="initial value of p1"):
        w.fit(lambda x, a, b: a + b * x, x, x, [0.0, 5.0], ([0, 0], [1, 1]))
    with pytest.raises(ValueError, match="need min <= max"):
        w.fit(lambda x, a, b: a + b * x, x, x, [0.5, 0.5], ([0, 1], [1, 0]))
    with pytest.raises(ValueError, match="method must be one of"):
        w.fit(lambda x, a, b: a + b * x, x, x, [0.5, 0.5], method="dogbox")


def test_strategy_thresholds_and_override():
    sel = DatasetSizeStrategy(memory_limit_gb=1000.0)
    assert sel.select_strategy(999_999) == OptimizationStrategy.STANDARD
    assert sel.select_strategy(1_000_000) == OptimizationStrategy.LARGE
    assert sel.select_strategy(10_000_000) == OptimizationStrategy.CHUNKED
    assert sel.select_strategy(100_000_001) == OptimizationStrategy.STREAMING
    assert sel.select_strategy(10, strategy_override="streaming") == "STREAMING"
    # data that would not fit half the memory budget stream regardless of size
    assert DatasetSizeStrategy(memory_limit_gb=0.01).select_strategy(5_000_000) == "STREAMING"
    with pytest.raises(ValueError, match="strategy_override"):
        sel.select_strategy(10, strategy_override="fast")


def test_streaming_config_batch_formula():
    sel = DatasetSizeStrategy()
    cfg = sel.build_streaming_config(200_000_000, 9, memory_limit_gb=0.01,
                                     checkpoint_config={"enable_checkpoints": True})
    expect = int(0.1 * 0.01 * 2**30 / (8 * (3 + 27 + 5)))
    assert cfg["batch_size"] == max(1000, expect) and cfg["enable_checkpoints"] is True
    assert sel.build_streaming_config(10**9, 9, memory_limit_gb=16.0)["batch_size"] == 100_000
    assert sel.build_streaming_config(10**9, 9, memory_limit_gb=1e-6)["batch_size"] == 1000
    big = sel.build_streaming_config(10**9, 5, memory_limit_gb=64, max_batch_size=500_000)
    assert big["batch_size"] == 500_000
    ad = sel.build_streaming_config(10**9, 9, memory_limit_gb=16, adaptive_batching=True,
                                    initial_batch_size=5000, max_batch_size=100_000)
    assert ad["batch_size"] == 5000 and ad["max_batch_size"] == 100_000


def test_streamed_coarse_levels_do_not_grow_with_the_data():
    """Held in memory, so capped for streamed data (constant memory); in-memory tiers
    climb to 16M points on a billion."""
    from homodyne.optimization.driver import coarse_levels

    class Data:  # the DataSource members coarse_levels uses
        batch_size = 65_536
        can_spill = False

        def __init__(self, n, streamed):
            self.n_points, self.streamed = n, streamed

        def subsample(self, m, batch_size, dtype=None):
            return Data(min(m, self.n_points), False)

    sizes = {n: [lv.n_points for lv in coarse_levels(Data(n, True), EngineOptions())]
             for n in (10_000_000, 100_000_000, 1_000_000_000)}
    assert sizes[10_000_000] == sizes[100_000_000] == sizes[1_000_000_000] == \
        [250_000, 2_000_000]
    in_memory = [lv.n_points for lv in coarse_levels(Data(10**9, False), EngineOptions())]
    assert in_memory == [250_000, 2_000_000, 16_000_000]


def test_streamed_levels_over_the_memory_cap_spill_to_a_file(tmp_path):
    """A level bigger than streaming_coarse_max_points is a temporary file streamed like
    the data (the strided subsample, exactly); the fit reaches the same optimum as with
    every level in memory."""
    from homodyne.optimization.driver import coarse_levels
    from homodyne.optimization.sources import FileLevelData, InMemoryData, StreamingData

    spec = make_spec("static", n_frames=400, n_phi=3)
    generate_synthetic(tmp_path / "d.h5", spec, truth_for(spec), noise_sigma=0.01, seed=5)
    src = open_two_time(tmp_path / "d.h5")
    y = src.read_packed().astype(np.float32)
    opts = EngineOptions(coarse_points=2000, coarse_level_factor=4,
                         streaming_coarse_max_points=8000, batch_size=1000)
    levels = coarse_levels(StreamingData(src, 1000, 4), opts)
    assert [type(lv) for lv in levels] == [InMemoryData, InMemoryData, FileLevelData]
    dense = levels[-1]
    got = np.concatenate([b[:n].copy() for _, b, n in dense._runs(0)])
    np.testing.assert_array_equal(got, y[:: dense.stride])
    mid = levels[1]
    np.testing.assert_array_equal(np.asarray(mid.columns["y"])[: mid.n_points],
                                  y[:: mid.stride])
    k = spec.n_scaling_sets
    p0 = spec.pack([0.25] * k, [1.0] * k, [8000.0, -0.4, 80.0])
    bounds = (spec.pack(0.0, 0.5, [1, -2, -1000]), spec.pack(1.0, 1.5, [1e5, 0.5, 1000]))
    r_file = NLSQWrapper(strategy_override="streaming", batch_size=1000,
                         options=opts).fit_two_time(src, spec, p0, bounds)
    r_mem = NLSQWrapper(strategy_override="standard", batch_size=1000,
                        options=opts).fit_two_time(src, spec, p0, bounds)
    assert r_file.coarse_points == dense.n_points == r_mem.coarse_points
    assert np.max(np.abs(r_file.parameters - r_mem.parameters) / r_mem.uncertainties) < 1e-3
