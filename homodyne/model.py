"""The two-time correlation model c2(phi, t1, t2) of ``physics.md``, in JAX.

Conventions (one implementation, used everywhere):

* frame k (1-based) sits at t = k * dt; a dataset holds frames
  ``first_frame .. first_frame + n_frames - 1``;
* J(t) = D0 t^alpha + D_offset, gdot(t) = gamma_dot_t0 t^beta + gamma_dot_t_offset;
* integrals by the cumulative trapezoid rule on the frame grid, one O(N) cumulative
  sum per parameter vector, I(i, j) = |C[j] - C[i]|;
* c2 = offset_k + contrast_k * (exp(-q^2/2 I_J) * sinc(q h cos(phi0 - phi_k) I_g / 2))^2;
* the fitted points are the strict upper triangle (j > i) of each angle's matrix,
  addressed by a global flat index g = angle * M + k, M = N (N - 1) / 2, k the
  row-major position inside the triangle. Coordinates are computed from g; no
  per-point index array exists anywhere.

Parameter vector order: scaling first, then physical parameters, as in the guide's
example (``[contrast, offset, D0, alpha, D_offset]``). With "individual" scaling the
order is ``contrast[0..K-1], offset[0..K-1], physical...``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from homodyne.jaxconf import jax, jnp

STATIC_PARAMS = ("D0", "alpha", "D_offset")
LAMINAR_PARAMS = STATIC_PARAMS + ("gamma_dot_t0", "beta", "gamma_dot_t_offset", "phi0")
MODES = ("static", "laminar_flow")
# a detector frame time (seconds) the float64 model represents without overflow
FRAME_TIME_RANGE_S = (1e-12, 1e6)


# angles (degrees) closer than this modulo 360 are one direction: far below any phi bin,
# above the rounding of angles stored as float32 (6e-5 at 720) or computed (370.0000000001)
SAME_ANGLE_TOL_DEG = 1e-4
# |angle| (degrees) beyond which an angle is no direction: modulo 360 it is rounding noise
# (the float64 spacing of numbers near 1e20 is 16384 deg; near 1e6, 1e-10 deg)
MAX_ABS_PHI_DEG = 1e6


def angle_problem(phi_deg) -> str | None:
    """What is wrong with finite angles (degrees) beyond +/-MAX_ABS_PHI_DEG, or None."""
    far = [float(p) for p in phi_deg if abs(float(p)) > MAX_ABS_PHI_DEG]
    if not far:
        return None
    return (f"angle {far[0]:g} deg is beyond +/-{MAX_ABS_PHI_DEG:g} deg, where an angle "
            "modulo 360 is rounding noise; give angles in degrees")


def same_angle_pair(phi_deg) -> tuple[int, int] | None:
    """Indices of the first two angles (degrees) that are one direction for the model
    (equal modulo 360 within SAME_ANGLE_TOL_DEG: 0 and 360, 10 and -350, 10 and
    370.0000000001), or None."""
    turns = [float(phi) % 360.0 for phi in phi_deg]
    for k, turn in enumerate(turns):
        for j in range(k):
            apart = abs(turn - turns[j])
            if min(apart, 360.0 - apart) <= SAME_ANGLE_TOL_DEG:
                return j, k
    return None


def frame_time_problem(name: str, dt: float) -> str | None:
    """What is wrong with ``dt`` (seconds) as a frame time, or None where it is one."""
    lo, hi = FRAME_TIME_RANGE_S
    if lo <= dt <= hi:
        return None
    return (f"{name} = {dt:g} s is not a detector frame time (it must lie between {lo:g} s "
            f"and {hi:g} s)")
SCALINGS = ("individual", "shared")


class TriangleGrid:
    """Sizes of a dataset of ``phi_deg`` angles x ``n_frames`` frames, strict upper triangles."""

    phi_deg: tuple[float, ...]  # provided by the subclass (field or property)
    n_frames: int

    @property
    def n_phi(self) -> int:
        return len(self.phi_deg)

    @property
    def points_per_angle(self) -> int:
        return self.n_frames * (self.n_frames - 1) // 2

    @property
    def n_points(self) -> int:
        return self.n_phi * self.points_per_angle

    @property
    def shape_text(self) -> str:
        """'2 angles x 200 frames' ('1 angle x 291 frames': one angle is no plural)."""
        return f"{self.n_phi} angle{'' if self.n_phi == 1 else 's'} x {self.n_frames} frames"


def whole_number(name: str, value) -> int:
    """``value`` as an int: an integer (numpy's too) or an integral float such as 3.0, as
    the config takes it; a bool, a fraction or text is a ValueError naming ``name``."""
    if not isinstance(value, (bool, np.bool_)):
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
    raise ValueError(f"{name} must be a whole number, got {value!r}")


@dataclass(frozen=True)
class ModelSpec(TriangleGrid):
    """Everything the model needs besides the parameter vector; hashable (static for jit)."""

    mode: str = "static"
    q: float = 0.0054
    dt: float = 0.1
    n_frames: int = 100
    phi_deg: tuple[float, ...] = (0.0,)
    gap_h: float = 2.0e6
    scaling: str = "individual"
    first_frame: int = 1
    dtype: str = "float64"
    # leave out |t2 - t1| < k frames (the near-diagonal band); 0 and 1 keep every point
    exclude_diagonal_frames: int = 0
    _checked: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"analysis_mode must be one of {MODES}, got {self.mode!r}")
        if self.scaling not in SCALINGS:
            raise ValueError(f"per_angle_scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        for name in ("n_frames", "first_frame"):
            object.__setattr__(self, name, whole_number(name, getattr(self, name)))
        if self.n_frames < 2:
            raise ValueError(f"need at least 2 frames, got n_frames={self.n_frames}")
        phi = np.asarray(self.phi_deg, dtype=object)
        if phi.ndim != 1 or not all(isinstance(p, (int, float, np.integer, np.floating))
                                    and not isinstance(p, (bool, np.bool_)) for p in phi):
            raise ValueError(f"phi_deg must be a sequence of angles in degrees, got "
                             f"{self.phi_deg!r}")
        if not phi.size:
            raise ValueError("need at least one angle (phi_deg is empty)")
        if self.first_frame < 1:
            raise ValueError(f"first_frame is 1-based, got {self.first_frame}")
        k = self.exclude_diagonal_frames
        if isinstance(k, bool) or int(k) != k or k < 0:
            raise ValueError(f"exclude_diagonal_frames must be an integer >= 0, got {k!r}")
        if k >= self.n_frames:
            raise ValueError(f"exclude_diagonal_frames = {k} leaves no point of "
                             f"{self.n_frames} frames; use a value below {self.n_frames}")
        object.__setattr__(self, "exclude_diagonal_frames", int(k))
        for name in ("q", "dt", "gap_h"):  # a NaN, text or a bool met later as a NaN model
            v = getattr(self, name)
            if isinstance(v, np.ndarray) and v.ndim == 0:  # as h5py's ds[()] gives a scalar
                v = v[()]
            number = isinstance(v, (int, float, np.integer, np.floating)) and \
                not isinstance(v, (bool, np.bool_))
            try:
                f = float(v) if number else math.nan
            except OverflowError:  # an int beyond any float (10**400)
                f = math.nan
            if not (math.isfinite(f) and f > 0):
                raise ValueError(f"q, dt and gap_h must be finite numbers > 0, got {name}="
                                 f"{getattr(self, name)!r}")
            object.__setattr__(self, name, f)  # a Python float: one repr, hash and JSON
        problem = frame_time_problem("dt", self.dt)
        if problem:
            raise ValueError(problem)
        if not all(math.isfinite(p) for p in phi):
            raise ValueError(f"phi_deg must be finite angles in degrees, got {self.phi_deg!r}")
        problem = angle_problem(phi)
        if problem:
            raise ValueError(f"phi_deg: {problem}")
        object.__setattr__(self, "phi_deg", tuple(float(p) for p in self.phi_deg))

    # --- names ----------------------------------------------------------
    @property
    def physical_names(self) -> tuple[str, ...]:
        return STATIC_PARAMS if self.mode == "static" else LAMINAR_PARAMS

    @property
    def n_kept_points(self) -> int:
        """Points fitted: the stored ones less the near-diagonal band (d = j - i < k)."""
        d = max(self.exclude_diagonal_frames - 1, 0)  # band distances 1 .. k-1
        return self.n_points - self.n_phi * (d * self.n_frames - d * (d + 1) // 2)

    def band_mask(self, i, j):
        """True for points kept by ``exclude_diagonal_frames`` (from coordinates alone)."""
        return (j - i) >= self.exclude_diagonal_frames

    @property
    def n_physical(self) -> int:
        return len(self.physical_names)

    @property
    def n_scaling_sets(self) -> int:
        return self.n_phi if self.scaling == "individual" else 1

    @property
    def parameter_names(self) -> tuple[str, ...]:
        scal: tuple[str, ...]
        if self.scaling == "shared":
            scal = ("contrast", "offset")
        else:
            scal = tuple(f"contrast[{k}]" for k in range(self.n_phi)) + tuple(
                f"offset[{k}]" for k in range(self.n_phi)
            )
        return scal + self.physical_names

    @property
    def n_params(self) -> int:
        return 2 * self.n_scaling_sets + self.n_physical

    @property
    def jdtype(self):
        return jnp.float64 if self.dtype == "float64" else jnp.float32

    def frame_times(self) -> np.ndarray:
        """Times of the dataset's frames, t = k * dt with k 1-based (no time is zero)."""
        return (self.first_frame + np.arange(self.n_frames, dtype=np.float64)) * self.dt

    def split(self, params):
        """Split a full parameter vector into (contrast[K], offset[K], physical[P])."""
        s = self.n_scaling_sets
        contrast = params[:s]
        offset = params[s : 2 * s]
        phys = params[2 * s :]
        return contrast, offset, phys

    def pack(self, contrast, offset, physical) -> np.ndarray:
        """Build a full parameter vector from its parts (scalars broadcast per angle)."""
        s = self.n_scaling_sets
        c = np.broadcast_to(np.asarray(contrast, dtype=np.float64), (s,))
        o = np.broadcast_to(np.asarray(offset, dtype=np.float64), (s,))
        p = np.asarray(physical, dtype=np.float64).reshape(-1)
        if p.size != self.n_physical:
            raise ValueError(
                f"{self.mode} mode needs {self.n_physical} physical parameters "
                f"{self.physical_names}, got {p.size}"
            )
        return np.concatenate([c, o, p])


# --- pure building blocks --------------------------------------------------


def cumulative_trapezoid(f, dt):
    """C[i] = sum_{m<i} (f[m] + f[m+1]) dt / 2 with C[0] = 0 (length preserved)."""
    inc = (f[:-1] + f[1:]) * (0.5 * dt)
    return jnp.concatenate([jnp.zeros((1,), f.dtype), jnp.cumsum(inc)])


def transport_coefficient(t, D0, alpha, D_offset):
    """J(t) = D0 t^alpha + D_offset [Å²/s]."""
    return D0 * t**alpha + D_offset


def shear_rate(t, gamma_dot_t0, beta, gamma_dot_t_offset):
    """gdot(t) = gamma_dot_t0 t^beta + gamma_dot_t_offset [1/s]."""
    return gamma_dot_t0 * t**beta + gamma_dot_t_offset


def sinc(x):
    """Unnormalised sinc, sin(x)/x with sinc(0) = 1 (JAX's sinc is sin(pi x)/(pi x))."""
    return jnp.sinc(x / jnp.pi)


def sinc_prime(x):
    """d sinc/dx, with the series -x/3 + x^3/30 near 0 where the closed form cancels."""
    small = jnp.abs(x) < 1e-3
    xs = jnp.where(small, 1.0, x)
    exact = (jnp.cos(xs) - jnp.sin(xs) / xs) / xs
    series = -x / 3.0 + x**3 / 30.0
    return jnp.where(small, series, exact)


def frame_integrals(physical, spec: ModelSpec):
    """Cumulative integrals (C_J, C_g) on the frame grid for one physical vector."""
    t = jnp.asarray(spec.frame_times(), dtype=spec.jdtype)
    phys = physical.astype(spec.jdtype)
    cj = cumulative_trapezoid(transport_coefficient(t, phys[0], phys[1], phys[2]), spec.dt)
    if spec.mode == "static":
        cg = jnp.zeros_like(cj)
    else:
        cg = cumulative_trapezoid(shear_rate(t, phys[3], phys[4], phys[5]), spec.dt)
    return cj, cg


def frame_integrals_and_jacobian(physical, spec: ModelSpec):
    """(C_J, C_g) and their derivatives w.r.t. the physical parameters, (N,) and (N, P).

    Computed once per parameter vector (O(N P)); every point then needs only
    gathers at its two frames (chain rule), which is what makes a pass cheap.
    """
    physical = jnp.asarray(physical)
    cj, cg = frame_integrals(physical, spec)
    jac = jax.jacfwd(lambda p: jnp.stack(frame_integrals(p, spec)))(physical)
    return cj, cg, jac[0].astype(spec.jdtype), jac[1].astype(spec.jdtype)


def _cumulative_trapezoid_host(f, dt):
    """``cumulative_trapezoid`` along axis 0 in NumPy float64."""
    inc = (f[:-1] + f[1:]) * (0.5 * dt)
    return np.concatenate([np.zeros((1,) + f.shape[1:]), np.cumsum(inc, axis=0)])


def _power_law_integrals_host(t, amp, exponent, offset, dt):
    """Cumulative integrals of a t^e + c and of its derivatives w.r.t. (a, e, c),
    (N,) and (N, 3): the derivatives in closed form (t > 0)."""
    with np.errstate(over="ignore", invalid="ignore"):  # an extreme exponent: inf (or
        te = t**exponent  # 0 * inf), a failed batch, no warning
        f = np.stack([amp * te + offset, te, amp * te * np.log(t), np.ones_like(t)], axis=1)
    c = _cumulative_trapezoid_host(f, dt)
    return c[:, 0], c[:, 1:]


def frame_integrals_and_jacobian_host(physical, spec: ModelSpec):
    """``frame_integrals_and_jacobian`` in NumPy float64 (cast to the model's dtype):
    O(N P) on the host with nothing to compile; compiling the JAX form costs more than
    all the passes of a small fit. Equal to it to rounding (the sums run in another
    order; test_model checks it)."""
    p = np.asarray(physical, dtype=np.float64)
    t = spec.frame_times()
    n, n_phys = t.size, spec.n_physical
    cj, dj = _power_law_integrals_host(t, p[0], p[1], p[2], spec.dt)
    dcj, dcg = np.zeros((n, n_phys)), np.zeros((n, n_phys))
    dcj[:, :3] = dj
    if spec.mode == "static":
        cg = np.zeros(n)
    else:
        cg, dcg[:, 3:6] = _power_law_integrals_host(t, p[3], p[4], p[5], spec.dt)
    out = np.dtype(spec.jdtype)
    return tuple(np.ascontiguousarray(a, dtype=out) for a in (cj, cg, dcj, dcg))


def frame_table(frame_ctx, spec: ModelSpec, xp=np):
    """The one table a pass gathers from, one row per frame: C_J and its derivatives
    w.r.t. (D0, alpha, D_offset), then (laminar flow) C_g and its derivatives w.r.t. the
    shear-rate parameters, (N, 4) or (N, 8). ``frame_ctx`` is (C_J, C_g, dC_J, dC_g) as
    ``frame_integrals_and_jacobian`` returns them; ``xp`` is numpy or jax.numpy. Two
    gathers per point (its rows i and j) instead of one per column."""
    cj, cg, dcj, dcg = frame_ctx
    cols = [cj[:, None], dcj[:, :3]]
    if spec.mode == "laminar_flow":
        cols += [cg[:, None], dcg[:, 3:6]]
    return xp.concatenate(cols, axis=1)


def frame_table_host(physical, spec: ModelSpec) -> np.ndarray:
    """``frame_table`` of ``frame_integrals_and_jacobian_host`` (NumPy, model dtype).

    float32: computed in float64, then each integral column (C_J, C_g) split into a
    float32 head and the float32 rest, appended as the last columns: a point's
    difference of two rows is then exact to float32 rounding of the difference itself,
    not of the integrals (which grow along the frames: two rounded integrals differ by
    eps_32 C(t_max), far beyond eps_32 |C_j - C_i| near the diagonal at late times)."""
    s64 = dataclasses.replace(spec, dtype="float64")
    table = frame_table(frame_integrals_and_jacobian_host(physical, s64), spec)
    if spec.dtype == "float64":
        return np.ascontiguousarray(table)
    head = table.astype(spec.dtype)
    cols = _INTEGRAL_COLUMNS[spec.mode]
    rest = (table[:, cols] - head[:, cols].astype(np.float64)).astype(spec.dtype)
    return np.ascontiguousarray(np.concatenate([head, rest], axis=1))


# the columns of ``frame_table`` holding integrals (the others hold their derivatives)
_INTEGRAL_COLUMNS = {"static": [0], "laminar_flow": [0, 4]}


def triu_row_start(r, n_frames: int):
    """Row-major position of (r, r+1), the first point of row r, in the strict upper
    triangle of an N x N matrix: r (2N - r - 1) / 2 (ints, NumPy or JAX arrays)."""
    return r * (2 * n_frames - r - 1) // 2


def triu_row(k, n_frames: int, xp=jnp):
    """Row of row-major position k in the strict upper triangle of an N x N matrix;
    ``xp`` is ``jax.numpy`` (traced paths) or ``numpy``. The float inverse of
    ``triu_row_start`` is corrected by one step either way, so it is exact in integers."""
    n = n_frames
    k = k.astype(xp.int64)
    b = 2.0 * n - 1.0
    kf = k.astype(xp.float64)
    i = xp.floor((b - xp.sqrt(xp.maximum(b * b - 8.0 * kf, 0.0))) / 2.0).astype(xp.int64)
    i = xp.clip(i, 0, n - 2)
    i = xp.where(triu_row_start(i + 1, n) <= k, i + 1, i)
    return xp.where(triu_row_start(i, n) > k, i - 1, i)


def triu_coordinates(k, n_frames: int):
    """Row-major position k in the strict upper triangle of an N x N matrix -> (i, j)."""
    k = k.astype(jnp.int64)
    i = triu_row(k, n_frames)
    j = k - triu_row_start(i, n_frames) + i + 1
    return i, j


def point_coordinates(g, spec: ModelSpec):
    """Global flat point index -> (angle, i, j), computed from the position alone."""
    m = spec.points_per_angle
    g = g.astype(jnp.int64)
    angle = g // m
    i, j = triu_coordinates(g - angle * m, spec.n_frames)
    return angle, i, j


def _angle_geometry(physical, angle, spec: ModelSpec, dtype=None):
    """cos and sin of (phi0 - phi_k) in radians, computed per angle in ``dtype`` (the
    model's by default), then cast to the model's and gathered."""
    dt = dtype or spec.jdtype
    phi = jnp.asarray(spec.phi_deg, dtype=dt)
    d = jnp.deg2rad(physical[6].astype(dt) - phi)
    return jnp.cos(d).astype(spec.jdtype)[angle], jnp.sin(d).astype(spec.jdtype)[angle]


def c2_points(params, g, spec: ModelSpec):
    """c2 at global flat point indices g (any shape), straightforward forward model."""
    params = jnp.asarray(params)
    contrast, offset, phys = spec.split(params)
    cj, cg = frame_integrals(phys, spec)
    angle, i, j = point_coordinates(g, spec)
    return _c2_from_integrals(contrast, offset, phys, cj, cg, angle, i, j, spec)


def _scaling_index(angle, spec: ModelSpec):
    return angle if spec.scaling == "individual" else jnp.zeros_like(angle)


def _c2_from_integrals(contrast, offset, phys, cj, cg, angle, i, j, spec: ModelSpec):
    q = spec.q
    ij = jnp.abs(cj[j] - cj[i])
    g1 = jnp.exp(-0.5 * q * q * ij)
    if spec.mode == "laminar_flow":
        cos_d, _ = _angle_geometry(phys, angle, spec)
        ig = jnp.abs(cg[j] - cg[i])
        g1 = g1 * sinc(0.5 * q * spec.gap_h * cos_d * ig)
    s = _scaling_index(angle, spec)
    return offset[s].astype(g1.dtype) + contrast[s].astype(g1.dtype) * g1 * g1


def _sinc_and_derivative(x, dtype: str):
    """sinc(x) and sinc'(x) from one sin/cos evaluation, by their series near 0 where
    the closed form of sinc' cancels (cos x - sin x / x ~ -x^2/3: a relative error
    eps / x^2, 36% at x = 1e-3 in float32). float32 takes its series to |x| < 0.1
    (truncation < 1e-10, cancellation beyond < 4e-5 of sinc'), float64 to 1e-3."""
    small = jnp.abs(x) < (1e-3 if dtype == "float64" else 0.1)
    xs = jnp.where(small, 1.0, x)
    sn, cs = jnp.sin(xs), jnp.cos(xs)
    x2 = x * x
    if dtype == "float64":
        sinc, dsinc = 1.0 - x2 / 6.0, x * (-1.0 / 3.0 + x2 / 30.0)
    else:
        sinc = 1.0 + x2 * (-1.0 / 6 + x2 / 120)
        dsinc = x * (-1.0 / 3 + x2 * (1.0 / 30 - x2 / 840))
    return jnp.where(small, sinc, sn / xs), jnp.where(small, dsinc, (cs - sn / xs) / xs)


def c2_points_with_jacobian(params, table, g, spec: ModelSpec):
    """c2 at points g and its derivatives, exploiting the Jacobian's sparsity.

    Returns (c2, d_contrast, d_offset, d_physical[..., P], scaling_index): a point
    touches only its own angle's contrast/offset (one column each) and the physical
    columns. ``table`` is ``frame_table`` of ``frame_integrals_and_jacobian(physical,
    spec)``: C_J depends only on (D0, alpha, D_offset) and C_g only on the three
    shear-rate parameters, so a point needs only the difference of two table rows.
    A float32 model takes ``frame_table_host``'s table (the integrals' float32 rests
    appended) and returns c2 in float64: only g1 and the derivatives are float32.
    """
    contrast, offset, phys = spec.split(params)
    dt = spec.jdtype
    q = spec.q
    # computed once and kept: XLA would otherwise repeat the triangle arithmetic inside
    # each gather (larger kernels, slower to compile and to run; the same bits)
    angle, i, j = jax.lax.optimization_barrier(point_coordinates(g, spec))
    s = _scaling_index(angle, spec)
    con = contrast.astype(dt)[s]
    d = table[j] - table[i]  # C and dC between the point's two frames
    # a float32 table ends with the integrals' rests (``frame_table_host``)
    rests = spec.dtype != "float64"
    dj = d[..., 0] + d[..., -len(_INTEGRAL_COLUMNS[spec.mode])] if rests else d[..., 0]
    sj = jnp.where(dj >= 0, 1.0, -1.0).astype(dt)
    g1d = jnp.exp(-0.5 * q * q * jnp.abs(dj))
    # d g1d / d theta_J = g1d * (-q^2/2) * sign * (dC[j] - dC[i])
    d_ij = d[..., 1:4] * sj[..., None]
    if spec.mode == "static":
        g1 = g1d
        dg1 = (g1d * (-0.5 * q * q))[..., None] * d_ij
    else:
        # phi0 in float64: its float32 rounding (1e-6 degrees) can be a standard error
        cos_d, sin_d = _angle_geometry(phys, angle, spec, jnp.float64)
        dg_ = d[..., 4] + d[..., -1] if rests else d[..., 4]
        sg = jnp.where(dg_ >= 0, 1.0, -1.0).astype(dt)
        ig = jnp.abs(dg_)
        a = 0.5 * q * spec.gap_h
        x = a * cos_d * ig
        g1s, ds = _sinc_and_derivative(x, spec.dtype)
        g1 = g1d * g1s
        d_ig = d[..., 5:8] * sg[..., None]
        dg_j = (g1s * g1d * (-0.5 * q * q))[..., None] * d_ij
        dg_g = (g1d * ds * a * cos_d)[..., None] * d_ig
        dg_phi0 = g1d * ds * a * ig * (-sin_d) * (jnp.pi / 180.0)
        dg1 = jnp.concatenate([dg_j, dg_g, dg_phi0[..., None]], axis=-1)
    g2 = g1 * g1
    # c2 in float64 whatever the model's dtype: the offset (~1) rounded to float32 would
    # carry an error of eps_32 to every point, as large as its standard error at low noise
    f64 = jnp.float64
    c2 = offset.astype(f64)[s] + contrast.astype(f64)[s] * g2.astype(f64)
    d_phys = (2.0 * con * g1)[..., None] * dg1
    return c2, g2, jnp.ones_like(g2), d_phys, s


@partial(jax.jit, static_argnames=("spec", "n_rows"))
def c2_row_block(params, spec: ModelSpec, angle, row_start, n_rows: int):
    """Rows row_start .. row_start+n_rows-1 (t1 indices) x all t2 of one angle.

    Returns (values, mask), shape (n_rows, N); mask is j > i, the fitted points.
    This is the block shape the disk reader yields; compiled once per row count.
    """
    params = jnp.asarray(params)
    contrast, offset, phys = spec.split(params)
    cj, cg = frame_integrals(phys, spec)
    n = spec.n_frames
    i = jnp.minimum(row_start + jnp.arange(n_rows), n - 1)[:, None] * jnp.ones((1, n), jnp.int64)
    j = jnp.ones((n_rows, 1), jnp.int64) * jnp.arange(n)[None, :]
    a = jnp.full(i.shape, angle, dtype=jnp.int64)
    values = _c2_from_integrals(contrast, offset, phys, cj, cg, a, i, j, spec)
    return values, j > i


def c2_rows(params, spec: ModelSpec, angle: int, row_start: int, row_stop: int):
    """Like ``c2_row_block`` for rows [row_start, row_stop), as NumPy arrays."""
    v, m = c2_row_block(jnp.asarray(params, dtype=jnp.float64), spec, angle, row_start,
                        row_stop - row_start)
    return np.asarray(v), np.asarray(m)


def c2_matrices(params, spec: ModelSpec) -> np.ndarray:
    """Full symmetric (n_phi, N, N) model matrices, for plots and small checks."""
    out = np.empty((spec.n_phi, spec.n_frames, spec.n_frames))
    for a in range(spec.n_phi):
        v, _ = c2_rows(params, spec, a, 0, spec.n_frames)
        v = np.asarray(v)
        upper = np.triu(v, 1)
        out[a] = upper + upper.T + np.diag(np.diag(v))
    return out


def c2_on_frames(params, spec: ModelSpec, idx) -> np.ndarray:
    """Model matrices (n_phi, n, n) on a subset of frame indices (integrals on the full
    grid), for plots of datasets too large to show whole."""
    idx = np.asarray(idx, np.int64)
    n = spec.n_frames
    ii, jj = np.triu_indices(idx.size, 1)
    i, j = idx[ii], idx[jj]
    k = triu_row_start(i, n) + (j - i - 1)
    m = spec.points_per_angle
    out = np.empty((spec.n_phi, idx.size, idx.size))
    contrast, offset, _ = spec.split(np.asarray(params, float))
    for a in range(spec.n_phi):
        vals = np.asarray(c2_points(params, jnp.asarray(a * m + k), spec))
        mat = np.zeros((idx.size, idx.size))
        mat[ii, jj] = vals
        mat = mat + mat.T
        s = a if spec.scaling == "individual" else 0
        np.fill_diagonal(mat, offset[s] + contrast[s])
        out[a] = mat
    return out


def pack_upper(matrix: np.ndarray) -> np.ndarray:
    """Strict upper triangle of a square matrix, row-major: the fitted points."""
    n = matrix.shape[-1]
    iu = np.triu_indices(n, 1)
    return matrix[..., iu[0], iu[1]]


def unpack_upper(values: np.ndarray, n_frames: int, fill=np.nan) -> np.ndarray:
    """Inverse of ``pack_upper`` into a symmetric matrix (diagonal = fill)."""
    out = np.full(values.shape[:-1] + (n_frames, n_frames), fill, dtype=np.float64)
    iu = np.triu_indices(n_frames, 1)
    out[..., iu[0], iu[1]] = values
    out[..., iu[1], iu[0]] = values
    return out
