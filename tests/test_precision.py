"""float32 model evaluation (float64 sums) converges like float64: same passes, same optimum."""

import dataclasses

import numpy as np
import pytest
from helpers import assert_matches, bounds_for, make_spec, noisy_data, start_for, truth_for

from homodyne.data import generate_synthetic, open_two_time
from homodyne.jaxconf import jnp
from homodyne.model import ModelSpec, c2_points
from homodyne.optimization.curvature import NEGLIGIBLE, SecantModel
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.precision import (
    FLOOR_FACTOR,
    MAX_STEP_FLOOR_SE,
    convergence_floors,
    gain_ratio,
)
from homodyne.optimization.problems import NormalEquations


def _compare(r64, r32):
    assert r64.converged, r64.stop_reason
    assert r32.converged, r32.stop_reason
    assert abs(r32.passes - r64.passes) <= 1, (r32.passes, r64.passes)
    dz = (r32.parameters - r64.parameters) / r64.uncertainties
    assert np.all(np.abs(dz) < 0.05), dz


def test_float32_standard_fit_converges_in_the_float64_passes():
    """Without a working-precision floor this fit stalled ("step vanished at working
    precision") after 28 passes; float64 needs 5. With c2 formed in float64 the float32
    noise here (noise 0.01) is 3.6e-6 standard errors: float64's own test stops it."""
    spec = make_spec("static", n_frames=201, n_phi=5)  # 100,500 points
    truth = truth_for(spec)
    y = noisy_data(spec, truth)
    lb, ub = bounds_for(spec)
    p0 = start_for(spec, truth)
    r64 = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    spec32 = dataclasses.replace(spec, dtype="float32")
    r32 = NLSQWrapper().fit_two_time(None, spec32, p0, (lb, ub), y=y.astype(np.float32))
    _compare(r64, r32)
    assert "working precision" not in r64.stop_reason + r32.stop_reason


def test_float32_streaming_fit_converges_in_the_float64_passes(tmp_path):
    """Streamed from a float32 file, coarse levels then full passes, float32 model."""
    spec = make_spec("static", n_frames=300, n_phi=3)
    truth = truth_for(spec)
    lb, ub = bounds_for(spec)
    p0 = start_for(spec, truth)
    results = {}
    for dtype in ("float64", "float32"):
        info = generate_synthetic(tmp_path / f"{dtype}.h5", spec, truth, noise_sigma=0.01,
                                  seed=5, dtype=dtype, block_rows=32)
        src = open_two_time(info.path)
        model = dataclasses.replace(src.model_spec(mode="static"), dtype=dtype)
        wrapper = NLSQWrapper(strategy_override="streaming", batch_size=3000,
                              options=EngineOptions(coarse_points=5_000))
        results[dtype] = wrapper.fit_two_time(src, model, p0, (lb, ub))
    assert results["float32"].coarse_passes > 0
    _compare(results["float64"], results["float32"])


def test_float32_laminar_fit_converges_in_the_float64_passes(laminar_case):
    """Laminar flow converges linearly under Gauss-Newton (each step overshoots ~45% along
    the weak shear direction); float32's cost differences (noise ~1e-6) could not judge
    that tail's steps (decreases ~1e-8): 50 passes, "step vanished at working precision",
    against 16 in float64. The learnt curvature (curvature.SecantModel) and the
    gradient-judged gain ratio (precision.gain_ratio) give 8 and 7."""
    spec, _, y, p0, lb, ub, ref = laminar_case
    r64 = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    spec32 = dataclasses.replace(spec, dtype="float32")
    r32 = NLSQWrapper().fit_two_time(None, spec32, p0, (lb, ub), y=y.astype(np.float32))
    _compare(r64, r32)
    assert r64.passes <= 10, r64.passes
    assert_matches(r64, ref)


@pytest.fixture(scope="module")
def corner_fits():
    """opt14 seed 2071 reduced (static, 6 angles, 4,680 points, noise 6e-5, physical
    parameters started on a bound corner), fitted in float64 and float32."""
    spec = ModelSpec(mode="static", n_frames=40, phi_deg=(-20.0, -2.0, 16.0, 34.0, 52.0, 70.0))
    truth = spec.pack([0.298, 0.223, 0.256, 0.181, 0.447, 0.157],
                      [1.031, 0.976, 0.951, 1.010, 0.966, 0.968], [121.57, -0.3877, 34.79])
    p0 = spec.pack([0.246, 0.202, 0.276, 0.199, 0.514, 0.142],
                   [0.891, 0.898, 0.950, 1.080, 1.025, 0.810], [1.0, 0.5, -1000.0])
    lb, ub = spec.pack(0.0, 0.5, [1.0, -2.0, -1e3]), spec.pack(1.0, 1.5, [1e5, 0.5, 1e3])
    y = np.asarray(c2_points(truth, jnp.arange(spec.n_points), spec))
    y = y + np.random.default_rng(1).normal(0, 6e-5, y.size)
    r64 = NLSQWrapper().fit_two_time(None, spec, p0, (lb, ub), y=y)
    spec32 = dataclasses.replace(spec, dtype="float32")
    r32 = NLSQWrapper().fit_two_time(None, spec32, p0, (lb, ub), y=y.astype(np.float32))
    return r64, r32


def test_float32_corner_start_keeps_the_float64_path(corner_fits):
    """The internal fit crawls to its iteration cap in both dtypes. float32 once called
    that stall "converged" (residuals within 1e4 float32 rounding errors of zero: real
    noise) and ended 22 standard errors away. Since the finish mirrors a negative level
    outside the box (lam14b), both dtypes reach the lower minimum near the truth
    (8.4143e-6; SciPy's TRF from this start ends at 9.8277e-6 with D_offset on its bound),
    within 0.05 SE of each other."""
    r64, r32 = corner_fits
    assert "residuals vanished" not in " ".join(r32.messages)
    assert r64.converged and r32.converged, (r64.stop_reason, r32.stop_reason)
    for r in (r64, r32):
        assert r.cost < 8.42e-6, r.cost
    dz = (r32.parameters - r64.parameters) / r64.uncertainties
    assert np.all(np.abs(dz) < 0.05), dz


@pytest.mark.xfail(strict=True, reason="issue 14's float32 target (passes +-1) not met on this "
                   "crawl since lam14b: 302 float32 passes against 288 in float64")
def test_float32_corner_start_takes_the_float64_passes(corner_fits):
    r64, r32 = corner_fits
    assert abs(r32.passes - r64.passes) <= 1, (r32.passes, r64.passes)


def test_secant_model_learns_the_curvature_jtj_misses():
    """r = y - exp(-k t): JᵀJ misses Σ r ∂²r/∂k²; after one small step the learnt S makes
    JᵀJ + S the cost's true second derivative; a step a bound blocked teaches nothing."""
    t = np.linspace(0.0, 3.0, 50)
    y = np.exp(-1.3 * t) + 0.1 * np.cos(2 * t)  # a residual left: S is 26% of JᵀJ

    def ne(k):
        m = np.exp(-k * t)
        r, jac = y - m, (-t * m)[:, None]  # J = d model / dk
        return NormalEquations(0.5 * float(r @ r), jac.T @ jac, jac.T @ r, t.size)

    def cost(k):
        return 0.5 * float(np.sum((y - np.exp(-k * t)) ** 2))

    k, h = 1.2, 1e-5
    exact = (cost(k + h) - 2 * cost(k) + cost(k - h)) / h**2
    step = np.array([1e-4])
    model = SecantModel(1)
    model.update(ne(k), ne(k + 1e-4), step, blocked=True)
    assert model.correction(ne(k).H) is None
    model.update(ne(k), ne(k + 1e-4), step)
    corr = model.correction(ne(k).H)
    assert corr is not None and abs(ne(k).H[0, 0] / exact - 1) > NEGLIGIBLE
    assert (ne(k).H + corr)[0, 0] == pytest.approx(exact, rel=1e-3)


def test_a_step_below_the_cost_noise_is_judged_by_the_gradients():
    """On f = ½ xᵀx a step from x to x/2 gains 3/8 |x|²; with a cost noise far above
    that, the costs' difference (here -1: noise) is not used, the gradients' is."""
    x = np.array([1e-3, -2e-3])

    def ne(v):
        return NormalEquations(0.5 * float(v @ v), np.eye(2), -v, 10)

    step = -0.5 * x
    pred = float(step @ ne(x).g - 0.5 * step @ step)
    assert pred == pytest.approx(0.375 * float(x @ x))
    assert gain_ratio(ne(x), ne(x + step), step, -1e-7, pred, 1e-5) == pytest.approx(1.0)
    assert gain_ratio(ne(x), ne(x + step), step, -1e-7, pred, 0.0) < 0
    assert gain_ratio(ne(x), ne(x + step), step, -1e-4, pred, 1e-5) < 0  # a real increase


@pytest.mark.parametrize("n", [10_000, 10**9])
def test_precision_floors(n):
    """float64 (error 0) keeps the requested tolerances; a float32 error floors both at
    FLOOR_FACTOR times its effect as independent noise (step delta / sigma standard
    errors, cosine delta / (rms sqrt(n))), the step floor never beyond MAX_STEP_FLOOR_SE."""
    assert convergence_floors(0.0, 5.0, n, 9) == (0.0, 0.0)
    step, cos = convergence_floors(1.2e-7 * 0.3, 0.5 * n * 1e-4, n, 9)  # sigma = 1e-2
    assert cos == pytest.approx(FLOOR_FACTOR * 3.6e-6 / np.sqrt(n))
    assert step == pytest.approx(FLOOR_FACTOR * 3.6e-6, rel=1e-3)
    assert convergence_floors(1.2e-7 * 0.3, 0.5 * n * 1e-10, n, 9)[0] == MAX_STEP_FLOOR_SE
