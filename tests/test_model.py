"""The model against an independent NumPy/SciPy implementation and analytic limits."""

import numpy as np
import pytest
from helpers import make_spec, truth_for
from scipy.integrate import cumulative_trapezoid

from homodyne.jaxconf import jax, jnp
from homodyne.model import (
    ModelSpec,
    c2_matrices,
    c2_points,
    c2_points_with_jacobian,
    frame_integrals_and_jacobian,
    frame_integrals_and_jacobian_host,
    frame_table,
    pack_upper,
    sinc,
    sinc_prime,
    triu_coordinates,
)


def reference_c2(params, spec: ModelSpec) -> np.ndarray:
    """Independent implementation: SciPy trapezoid, direct sinc, full matrices."""
    k = spec.n_scaling_sets
    contrast, offset, phys = params[:k], params[k : 2 * k], params[2 * k :]
    t = (spec.first_frame + np.arange(spec.n_frames)) * spec.dt
    J = phys[0] * t ** phys[1] + phys[2]
    CJ = cumulative_trapezoid(J, dx=spec.dt, initial=0.0)
    IJ = np.abs(CJ[None, :] - CJ[:, None])
    out = []
    for a, phi in enumerate(spec.phi_deg):
        g1 = np.exp(-0.5 * spec.q**2 * IJ)
        if spec.mode == "laminar_flow":
            gd = phys[3] * t ** phys[4] + phys[5]
            CG = cumulative_trapezoid(gd, dx=spec.dt, initial=0.0)
            IG = np.abs(CG[None, :] - CG[:, None])
            x = spec.q * spec.gap_h * np.cos(np.deg2rad(phys[6] - phi)) * IG / 2
            g1 = g1 * np.sinc(x / np.pi)
        s = a if spec.scaling == "individual" else 0
        out.append(offset[s] + contrast[s] * g1**2)
    return np.stack(out)


def random_params(spec, rng):
    k = spec.n_scaling_sets
    phys = [rng.uniform(1e3, 2e4), rng.uniform(-1.2, 0.5), rng.uniform(0, 1e3)]
    if spec.mode == "laminar_flow":
        phys += [rng.uniform(1e-4, 1e-2), rng.uniform(-0.5, 0.5), rng.uniform(-1e-4, 1e-4),
                 rng.uniform(-10, 10)]
    return spec.pack(rng.uniform(0.1, 0.5, k), rng.uniform(0.95, 1.05, k), phys)


@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
@pytest.mark.parametrize("scaling", ["individual", "shared"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_reference(mode, scaling, seed):
    spec = make_spec(mode, n_frames=80, n_phi=3, scaling=scaling, first_frame=5)
    params = random_params(spec, np.random.default_rng(seed))
    ref = reference_c2(params, spec)
    ours = np.asarray(c2_points(params, jnp.arange(spec.n_points), spec))
    np.testing.assert_allclose(ours, pack_upper(ref).ravel(), rtol=1e-12, atol=0)
    # full matrices (both triangles) agree too
    np.testing.assert_allclose(c2_matrices(params, spec), ref, rtol=1e-12, atol=0)


def test_symmetric_in_t1_t2():
    spec = make_spec("laminar_flow", n_frames=40)
    m = c2_matrices(truth_for(spec), spec)
    np.testing.assert_array_equal(m, np.swapaxes(m, 1, 2))


def test_sinc_limit_and_derivative():
    x = jnp.array([0.0, 1e-9, 9.99e-4, 1.001e-3, 0.5, 3.0])
    xn = np.asarray(x)
    assert float(sinc(jnp.array(0.0))) == 1.0
    assert float(sinc_prime(jnp.array(0.0))) == 0.0
    closed = np.where(xn == 0, 1.0, np.sin(xn) / np.where(xn == 0, 1, xn))
    np.testing.assert_allclose(np.asarray(sinc(x)), closed, rtol=1e-14)
    # reference: Taylor series (5 terms) below 0.1, the closed form above
    xr = xn[1:]
    series = -xr / 3 + xr**3 / 30 - xr**5 / 840 + xr**7 / 45360
    closed_d = (np.cos(xr) - np.sin(xr) / xr) / xr
    ref = np.where(xr < 0.1, series, closed_d)
    np.testing.assert_allclose(np.asarray(sinc_prime(x[1:])), ref, rtol=1e-9, atol=0)


def test_laminar_with_zero_shear_is_static():
    lam = make_spec("laminar_flow", n_frames=50)
    sta = make_spec("static", n_frames=50)
    k = lam.n_scaling_sets
    p_lam = truth_for(lam).copy()
    p_lam[2 * k + 3 : 2 * k + 6] = [0.0, 0.3, 0.0]  # gamma_dot = 0 everywhere
    p_sta = np.concatenate([p_lam[: 2 * k + 3]])
    g = jnp.arange(lam.n_points)
    np.testing.assert_allclose(np.asarray(c2_points(p_lam, g, lam)),
                               np.asarray(c2_points(p_sta, g, sta)), rtol=1e-15)


def test_constant_transport_gives_exponential():
    spec = make_spec("static", n_frames=60, n_phi=1, scaling="shared", q=0.01, dt=0.5)
    D0, Doff = 300.0, 20.0
    params = spec.pack(0.25, 1.0, [D0, 0.0, Doff])  # alpha = 0 -> J = D0 + D_offset
    m = c2_matrices(params, spec)[0]
    t = (1 + np.arange(60)) * 0.5
    expect = 1.0 + 0.25 * np.exp(-(0.01**2) * (D0 + Doff) * np.abs(t[None] - t[:, None]))
    np.testing.assert_allclose(m, expect, rtol=1e-13)


@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_host_frame_integrals_equal_the_autodiff_ones(mode, dtype):
    """The passes' frame integrals and derivatives (NumPy, closed form, nothing to
    compile) against JAX autodiff of the model's own integrals, to rounding; including
    the logarithmic edge (alpha = 0) and the model's float32."""
    spec = make_spec(mode, n_frames=3000, n_phi=2, dtype=dtype, first_frame=5)
    reference = jax.jit(frame_integrals_and_jacobian, static_argnums=1)
    rtol = 1e-13 if dtype == "float64" else 1e-5
    for alpha in (-0.5, 0.0, 1e-9, 1.3):
        phys = truth_for(spec)[2 * spec.n_scaling_sets :]
        phys[1] = alpha
        if mode == "laminar_flow":
            phys[4] = -alpha
        _assert_same_integrals(reference(phys, spec), frame_integrals_and_jacobian_host(
            phys, spec), rtol)


def _assert_same_integrals(ref, host, rtol):
    for r, h in zip(ref, host, strict=True):
        r = np.asarray(r)
        assert h.dtype == r.dtype and h.shape == r.shape
        np.testing.assert_allclose(h, r, rtol=rtol, atol=rtol * np.max(np.abs(r), initial=0))


@pytest.mark.parametrize("mode", ["static", "laminar_flow"])
@pytest.mark.parametrize("scaling", ["individual", "shared"])
def test_sparse_jacobian_matches_autodiff_and_finite_differences(mode, scaling):
    spec = make_spec(mode, n_frames=30, n_phi=3, scaling=scaling)
    params = jnp.asarray(truth_for(spec))
    g = jnp.arange(spec.n_points)
    k = spec.n_scaling_sets
    table = frame_table(frame_integrals_and_jacobian(params[2 * k :], spec), spec, jnp)
    c2, dcon, doff, dphys, s = c2_points_with_jacobian(params, table, g, spec)
    # assemble the dense Jacobian from the sparse pieces
    dense = np.zeros((spec.n_points, spec.n_params))
    rows = np.arange(spec.n_points)
    dense[rows, np.asarray(s)] = np.asarray(dcon)
    dense[rows, k + np.asarray(s)] = np.asarray(doff)
    dense[:, 2 * k :] = np.asarray(dphys)
    auto = np.asarray(jax.jacfwd(lambda p: c2_points(p, g, spec))(params))
    np.testing.assert_allclose(dense, auto, rtol=1e-10, atol=1e-14)
    # central finite differences, independent of JAX's autodiff
    p0 = np.asarray(params)
    for col in range(spec.n_params):
        h = 1e-6 * max(abs(p0[col]), 1e-3)
        up, dn = p0.copy(), p0.copy()
        up[col] += h
        dn[col] -= h
        fd = (np.asarray(c2_points(up, g, spec)) - np.asarray(c2_points(dn, g, spec))) / (2 * h)
        scale = max(np.abs(fd).max(), 1e-12)
        assert np.abs(fd - dense[:, col]).max() <= 1e-5 * scale, spec.parameter_names[col]
    np.testing.assert_allclose(np.asarray(c2), np.asarray(c2_points(params, g, spec)), rtol=1e-15)


def test_triangle_coordinates_exact_at_billion_point_scale():
    n = 14_142
    m = n * (n - 1) // 2
    rows = np.array([0, 1, 2, 7_000, n - 3, n - 2])
    starts = rows * (2 * n - rows - 1) // 2
    ks = np.unique(np.concatenate([starts, starts - 1, starts + 1, [m - 1]]))
    ks = ks[(ks >= 0) & (ks < m)]
    i, j = (np.asarray(v) for v in triu_coordinates(jnp.asarray(ks), n))
    off = i * (2 * n - i - 1) // 2
    assert np.all(off <= ks) and np.all(ks < off + (n - 1 - i))
    np.testing.assert_array_equal(j, ks - off + i + 1)
    assert np.all(j > i) and np.all(j < n)


def test_parameter_names_and_pack():
    spec = make_spec("laminar_flow", n_phi=2)
    assert spec.parameter_names[:4] == ("contrast[0]", "contrast[1]", "offset[0]", "offset[1]")
    assert spec.n_params == 4 + 7
    with pytest.raises(ValueError, match="7 physical parameters"):
        spec.pack(0.3, 1.0, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="analysis_mode"):
        ModelSpec(mode="flow")


def test_float32_option_close_to_float64():
    s64 = make_spec("static", n_frames=50)
    s32 = make_spec("static", n_frames=50, dtype="float32")
    p = truth_for(s64)
    g = jnp.arange(s64.n_points)
    v32 = np.asarray(c2_points(p, g, s32))
    assert v32.dtype == np.float32
    np.testing.assert_allclose(v32, np.asarray(c2_points(p, g, s64)), rtol=2e-6)
