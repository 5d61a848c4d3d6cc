"""A data-driven start for J(t) of a static two-time fit from a plain start (J flat).

One pass over the data sums the points into cells of (angle, log-age, lag): weight,
weighted data and squares, mean frame indices. A cell's model value is nearly constant,
so the cells give the cost of any parameter vector to within the spread of the model
inside a cell, at no further pass. On them: a grid over (alpha, J at the first frame,
J at the last frame) on the angles' pooled cells with one contrast and offset solved
linearly, then a polish of (D0, alpha, D_offset) by SciPy's TRF on the cells with each
scaling set's contrast and offset solved linearly at every trial. The model has |∫J|,
so a J < 0 fit (D0 < 0) is the same fit as its mirror -J (D0 > 0): both families are
searched. The estimate is
taken only where its cell cost is below the plain start's (judged on the cells: no pass).
A laminar fit started on a corner of the box (``corner_start``), or whose start's shear
decorrelates every frame pair (``shear_decorrelates``, lam14b), gets J(t) so, the shear
off, then a constant shear rate and phi0 from a grid on the same cells (lam14).
``EngineOptions.start_estimate`` / ``optimization.start_estimate`` (default on); the driver
counts its pass: a full pass, or a coarse one where it reads the densest coarse level.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np

from homodyne.model import point_coordinates

N_SHEAR = 25  # shear rates on the laminar grid, log-spaced, besides the least one
N_PHI0 = 13  # flow directions phi0 on the laminar grid, spread over its bounds

AGE_BINS = 12  # log-spaced bins of the age sqrt(t1 t2)
EXACT_LAGS = 64  # lags 1..64 frames each a cell; longer ones in log-spaced bins
LAG_BINS = 32
N_ALPHA = 17  # exponents on the grid, spread over the bounds (0 left out)
ALPHA_REACH = 2.0  # the grid's exponents within +-2 where alpha's bounds allow
N_LEVEL = 25  # values of J at each end of the window, log-spaced
ALPHA_MARGIN = 0.02  # of alpha's span: the start keeps off alpha's bounds


@dataclass(frozen=True)
class Cells:
    """Sums over the points of each occupied cell (weights w² of residuals (y - c2) w)."""

    angle: np.ndarray  # int
    cell: np.ndarray  # int: the cell inside its angle (age bin x lag cell)
    w: np.ndarray  # sum w²
    wy: np.ndarray  # sum w² y
    wyy: np.ndarray  # sum w² y²
    i: np.ndarray  # mean first frame index (0-based)
    j: np.ndarray  # mean second frame index


def applies(problem, x0, lb, ub) -> bool:
    """Static two-time fit with one of D0, alpha, D_offset free and J flat at the start
    (D0 = 0 or alpha = 0): a plain start, which has no trend of its own to keep. Held
    members (min == max) keep their values; the estimate fits the free ones. A laminar
    fit started on a corner of the box (``corner_start``) or with a shear that
    decorrelates every frame pair (``shear_decorrelates``) holds no estimate either."""
    spec = getattr(problem, "spec", None)
    if spec is None or spec.mode not in ("static", "laminar_flow"):
        return False
    k = 2 * spec.n_scaling_sets
    n_phys = 7 if spec.mode == "laminar_flow" else 3  # laminar: D0..D_offset held, shear free
    if not np.any(np.asarray(lb)[k:k + n_phys] < np.asarray(ub)[k:k + n_phys]):
        return False
    if spec.mode == "laminar_flow":
        return corner_start(x0[k:], np.asarray(lb)[k:], np.asarray(ub)[k:]) or \
            shear_decorrelates(spec, x0, lb, ub)
    return x0[k] == 0 or x0[k + 1] == 0


def corner_start(x, lb, ub) -> bool:
    """Every free physical parameter on one of its bounds: a corner of the box, no guess
    of the user's (lam14: from the 8 corners of a 3 x 60 laminar box the fit ended at
    chi2 1.7x to 22x the optimum; the shear's sinc has minima all over the box)."""
    x, lb, ub = (np.asarray(v, np.float64) for v in (x, lb, ub))
    free = lb < ub
    return bool(free.any() and np.all(((x <= lb) | (x >= ub))[free]))


def shear_decorrelates(spec, x, lb, ub) -> bool:
    """A free shear whose start puts the sinc's phase q h |cos(phi0 - phi)| |gdot(t)| dt / 2
    past pi at every angle and frame: its first zero before the one-frame lag, the model
    flat at the offset, no guess of the shear either (lam14b seed 2045: gamma_dot_t0 on
    its upper bound 1, the fit ended NOT converged at cost 17.8, SciPy 16.9, both at its
    cap; from the laminar estimate 0.0663 converged)."""
    k = 2 * spec.n_scaling_sets + 3
    if not np.any(np.asarray(lb)[k:k + 3] < np.asarray(ub)[k:k + 3]):
        return False
    g0, beta, g_off, phi0 = (float(v) for v in np.asarray(x, np.float64)[k:k + 4])
    with np.errstate(all="ignore"):
        rate = np.abs(g0 * spec.frame_times() ** beta + g_off)
    cos_d = np.abs(np.cos(np.deg2rad(phi0 - np.asarray(spec.phi_deg, np.float64))))
    phase = 0.5 * spec.q * spec.gap_h * spec.dt * cos_d[:, None] * rate[None, :]
    return bool(np.all(phase > np.pi))


def _lag_cell(d, n_frames: int) -> np.ndarray:
    """Lag (frames) -> lag cell: exact up to EXACT_LAGS, then log-spaced bins."""
    top = max(n_frames - 1, EXACT_LAGS + 1)
    edges = np.geomspace(EXACT_LAGS + 1, top + 1, LAG_BINS + 1)
    binned = EXACT_LAGS + np.clip(np.searchsorted(edges, d, side="right") - 1, 0, LAG_BINS - 1)
    return np.where(d <= EXACT_LAGS, d - 1, binned)


def cell_sums(spec, data, stop=None) -> tuple[Cells, int]:
    """One pass over ``data`` (host side): the cell sums and the batches read."""
    n_lag = EXACT_LAGS + LAG_BINS
    size = spec.n_phi * AGE_BINS * n_lag
    acc = np.zeros((6, size))
    t = spec.frame_times()
    lt = np.log(t)
    span = max(lt[-1] - lt[0], 1e-12)
    batches = 0
    for ch in data.chunks():
        if stop is not None and stop():
            break
        lo = ch.first_batch * data.batch_size
        hi = min((ch.first_batch + ch.n_batches) * data.batch_size, ch.n_valid)
        batches += ch.n_batches
        if hi <= lo:
            continue
        y = np.asarray(ch.columns["y"][..., lo:hi], np.float64)
        w2 = np.ones_like(y) if "w" not in ch.columns else \
            np.asarray(ch.columns["w"][..., lo:hi], np.float64) ** 2
        g = ch.origin + data.stride * np.arange(lo, hi, dtype=np.int64)
        a, i, j = (np.asarray(v) for v in point_coordinates(g, spec))
        ok = np.isfinite(y) & np.isfinite(w2) & spec.band_mask(i, j)
        a, i, j, y, w2 = a[ok], i[ok], j[ok], y[ok], w2[ok]
        age = np.clip(((lt[i] + lt[j]) / 2 - lt[0]) / span * AGE_BINS, 0, AGE_BINS - 1)
        c = (a * AGE_BINS + age.astype(np.int64)) * n_lag + _lag_cell(j - i, spec.n_frames)
        for row, v in enumerate((np.ones_like(y), w2, w2 * y, w2 * y * y, i, j)):
            acc[row] += np.bincount(c, v, minlength=size)
    keep = acc[0] > 0
    n = acc[0, keep]
    at = np.flatnonzero(keep)
    cells = Cells(at // (AGE_BINS * n_lag), at % (AGE_BINS * n_lag), acc[1, keep],
                  acc[2, keep], acc[3, keep], acc[4, keep] / n, acc[5, keep] / n)
    return cells, batches


def _integral(spec, cells, d0, alpha, d_off) -> np.ndarray:
    """∫J between the cells' mean frames (trapezoid on the frame grid, interpolated)."""
    t = spec.frame_times()
    f = d0 * t ** alpha + d_off
    c = np.concatenate([[0.0], np.cumsum((f[:-1] + f[1:]) * (0.5 * spec.dt))])
    k = np.arange(spec.n_frames)
    return np.interp(cells.j, k, c) - np.interp(cells.i, k, c)


def cell_cost(spec, cells, x) -> float:
    """½ Σ w² (y - c2)² over the cells, the model taken at each cell's mean frames."""
    con, off, phys = spec.split(np.asarray(x, np.float64))
    s = cells.angle if spec.scaling != "shared" else np.zeros_like(cells.angle)
    g = np.exp(-spec.q ** 2 * np.abs(_integral(spec, cells, *phys[:3])))
    m = off[s] + con[s] * g
    return 0.5 * float(np.sum(cells.wyy - 2 * m * cells.wy + m * m * cells.w))


ROW_BLOCK = 2_000_000  # grid rows x cells evaluated at once (16 MB per array)


def _pooled(cells) -> Cells:
    """The cells of all angles summed cell by cell (J is shared by the angles): the
    grid's cost then does not grow with the number of angles."""
    key, inverse = np.unique(cells.cell, return_inverse=True)
    w = np.bincount(inverse, cells.w)

    def total(v):
        return np.bincount(inverse, v)

    n = np.bincount(inverse)
    return Cells(np.zeros(key.size, np.int64), key, w, total(cells.wy), total(cells.wyy),
                 total(cells.i) / n, total(cells.j) / n)


def _scaling_sets(spec, cells):
    """Each cell's scaling set and where each set's cells start (cells are angle-major);
    None where a set has no cell."""
    s = cells.angle if spec.scaling != "shared" else np.zeros_like(cells.angle)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return (s, starts) if starts.size == spec.n_scaling_sets else None


def _linear_scaling(g, cells, starts, held_con=None, held_off=None):
    """Per grid row and scaling set: contrast and offset solved linearly for the decay
    g (rows, cells) and the cost they leave; a held one (not NaN in ``held_con`` /
    ``held_off``, per set) keeps its value and the other is solved for it."""
    def per_set(v):
        return np.add.reduceat(v, starts, axis=-1)

    sw, swy = per_set(cells.w), per_set(cells.wy)
    sg, sgg, sgy = per_set(g * cells.w), per_set(g * g * cells.w), per_set(g * cells.wy)
    det = sgg * sw - sg ** 2
    det = np.where(det > 0, det, np.nan)
    con = (sgy * sw - sg * swy) / det
    off = (swy - con * sg) / sw
    if held_off is not None:
        con = np.where(np.isnan(held_off), con, (sgy - held_off * sg)
                       / np.where(sgg > 0, sgg, np.nan))
    if held_con is not None:
        off = np.where(np.isnan(held_con), off, (swy - held_con * sg) / sw)
    for held, v in ((held_con, con), (held_off, off)):
        if held is not None:
            v[...] = np.where(np.isnan(held), v, held)
    cost = 0.5 * (cells.wyy.sum() - 2 * np.sum(con * sgy + off * swy, axis=-1)
                  + np.sum(con ** 2 * sgg + 2 * con * off * sg + off ** 2 * sw, axis=-1))
    return con, off, cost


def _held(lb, ub) -> np.ndarray:
    """Each member's held value (min == max), NaN where it is free."""
    return np.where(lb == ub, lb, np.nan)


def _rows(t, alpha, levels, held):
    """(D0, D_offset) of the grid's rows at one exponent: J at both ends of the window
    on the log grid of ``levels`` (J > 0); with D0 or D_offset held, J at the first
    frame on that grid, of either sign, and the held member's value."""
    h_d0, h_off = held
    if np.isnan(h_d0) and np.isnan(h_off) and abs(alpha) >= 1e-6:
        ja, jb = (v.ravel() for v in np.meshgrid(levels, levels, indexing="ij"))
        d0 = (jb - ja) / (t[-1] ** alpha - t[0] ** alpha)
        return d0, ja - d0 * t[0] ** alpha
    first = np.r_[levels, -levels]
    if not np.isnan(h_d0):
        return np.full_like(first, h_d0), first - h_d0 * t[0] ** alpha
    return (first - h_off) / t[0] ** alpha, np.full_like(first, h_off)


def _alpha_span(lo: float, hi: float) -> tuple[float, float]:
    """The exponents the grid spans: alpha's bounds within [-ALPHA_REACH, ALPHA_REACH]
    where they meet it, else the 2 * ALPHA_REACH of them nearest to it."""
    if lo > ALPHA_REACH:
        return lo, min(hi, lo + 2 * ALPHA_REACH)
    if hi < -ALPHA_REACH:
        return max(lo, hi - 2 * ALPHA_REACH), hi
    return max(lo, -ALPHA_REACH), min(hi, ALPHA_REACH)


def _grid(spec, cells, lb, ub) -> dict[bool, tuple[float, np.ndarray]]:
    """The grid's best (cost, x) of each family (J > 0, and its mirror J < 0: the same
    cells' cost, but the bounds on D0 and D_offset admit other points of each, whatever
    their signs): per exponent (alpha's held value where it is held), the rows of
    ``_rows``, one contrast and offset solved linearly on the angles' pooled cells
    (every set starts with them; a held one keeps its value, pooled as their mean)."""
    t = spec.frame_times()
    K = spec.n_scaling_sets
    k = 2 * K
    cells, starts = _pooled(cells), np.zeros(1, np.int64)
    held = _held(lb, ub)
    pooled_held = [None if np.all(np.isnan(h)) else np.array([np.nanmean(h)])
                   for h in (held[:K], held[K:k])]
    rate = spec.q ** 2 * spec.dt  # J -> decay per frame
    levels = np.geomspace(1e-4, 3.0, N_LEVEL) / rate
    if np.isnan(held[k + 1]):
        alphas = [a for a in np.linspace(*_alpha_span(lb[k + 1], ub[k + 1]), N_ALPHA)
                  if abs(a) >= 1e-6]
    else:
        alphas = [held[k + 1]]
    members = held[[k, k + 2]]
    if np.all(np.isnan(members)) and not np.isnan(held[k + 1]) and abs(held[k + 1]) < 1e-6:
        members[1] = np.clip(0.0, lb[k + 2], ub[k + 2])  # J = D0 + D_offset: one level
    lag = _integral(spec, cells, 0.0, 0.0, 1.0)
    rows = max(1, ROW_BLOCK // lag.size)
    best: dict[bool, tuple[float, np.ndarray]] = {}
    for alpha in alphas:
        d0, d_off = _rows(t, alpha, levels, members)
        base = _integral(spec, cells, 1.0, alpha, 0.0)
        parts = [_linear_scaling(np.exp(-spec.q ** 2 * np.abs(
            d0[r:r + rows, None] * base + d_off[r:r + rows, None] * lag)), cells, starts,
            *pooled_held) for r in range(0, d0.size, rows)]
        con, off, cost = (np.concatenate(v) for v in zip(*parts, strict=True))
        free = np.isnan(held)
        scaling_ok = np.all(((con >= lb[:K]) & (con <= ub[:K])) | ~free[:K], axis=1) \
            & np.all(((off >= lb[K:k]) & (off <= ub[K:k])) | ~free[K:k], axis=1) \
            & np.isfinite(cost)
        for family in (False, True):  # J as gridded, or its mirror -J
            sign = -1.0 if family else 1.0
            d0m, d_offm = sign * d0, sign * d_off
            fam = scaling_ok & (d0m >= lb[k]) & (d0m <= ub[k]) & (d_offm >= lb[k + 2]) \
                & (d_offm <= ub[k + 2])
            if not fam.any():
                continue
            m = int(np.argmin(np.where(fam, cost, np.inf)))
            if cost[m] < best.get(family, (math.inf,))[0]:
                x = spec.pack(con[m], off[m], [d0m[m], alpha, d_offm[m]])
                best[family] = (float(cost[m]), np.where(free, x, held))
    return best


def _polish(spec, cells, starts, x, lb, ub):
    """SciPy TRF on the cells over the free ones of (D0, alpha, D_offset) from the grid's
    x, each set's free contrast and offset solved linearly (clipped to their bounds) for
    every trial; kept only where J keeps one sign over the data (a J through 0 makes a
    kinked |∫J| the full fit walks badly)."""
    from scipy.optimize import least_squares

    K = spec.n_scaling_sets
    k = 2 * K
    held = _held(lb, ub)
    s = np.repeat(np.arange(K), np.diff(np.r_[starts, cells.w.size]))
    sw = np.sqrt(cells.w)
    ybar = cells.wy / cells.w
    con0, off0 = x[:K], x[K:k]  # the grid's (pooled) scaling
    free = np.isnan(held[k:k + 3])
    phys = x[k:k + 3].copy()

    def scaled(p):
        phys[free] = p
        g = np.exp(-spec.q ** 2 * np.abs(_integral(spec, cells, *phys)))
        con, off, _ = _linear_scaling(g, cells, starts, held[:K], held[K:k])
        # a set whose decay has no spread over its cells (one cell, or one lag) leaves
        # its contrast and offset undetermined (NaN): it keeps the grid's
        solved = np.isfinite(con) & np.isfinite(off)
        con, off = np.where(solved, con, con0), np.where(solved, off, off0)
        return np.clip(con, lb[:K], ub[:K]), np.clip(off, lb[K:k], ub[K:k]), g

    def residuals(p):
        con, off, g = scaled(p)
        return sw * (ybar - off[s] - con[s] * g)

    lo, hi = lb[k:k + 3][free], ub[k:k + 3][free]
    span = hi - lo
    inside = np.clip(x[k:k + 3][free], lo + 1e-9 * span, hi - 1e-9 * span)
    p = least_squares(residuals, inside, bounds=(lo, hi), x_scale="jac", max_nfev=100).x
    con, off, _ = scaled(p)
    j = phys[0] * spec.frame_times() ** phys[1] + phys[2]
    return spec.pack(con, off, phys) if np.all(j > 0) or np.all(j < 0) else x


def estimate(spec, cells, x0, lb, ub) -> tuple[np.ndarray | None, str]:
    """The start the cells suggest and a line saying what was done; None where the plain
    start's cell cost is not higher."""
    lb, ub = np.asarray(lb, np.float64), np.asarray(ub, np.float64)
    if spec.mode == "laminar_flow":
        return _laminar_estimate(spec, cells, np.asarray(x0, np.float64), lb, ub)
    sets = _scaling_sets(spec, cells)
    if sets is None:
        return None, "start estimate: a scaling set without data; plain start kept"
    _, starts = sets
    plain = cell_cost(spec, cells, x0)
    k = 2 * spec.n_scaling_sets
    margin = ALPHA_MARGIN * (ub[k + 1] - lb[k + 1])  # 0 where alpha is held
    cost, x = math.inf, None
    for _, xg in _grid(spec, cells, lb, ub).values():  # each family polished
        xp = _polish(spec, cells, starts, xg, lb, ub)
        c = cell_cost(spec, cells, xp)  # judged before alpha is moved off its bounds
        if c < cost:
            cost, x = c, xp
    if x is None:
        return None, "start estimate: no grid point inside the bounds; plain start kept"
    x[k + 1] = np.clip(x[k + 1], lb[k + 1] + margin, ub[k + 1] - margin)
    if lb[k] == ub[k] == 0:  # D0 held at 0: alpha has no influence; the user's stays
        x[k + 1] = x0[k + 1]
    cost = cell_cost(spec, cells, x)
    if not cost < plain:
        return None, (f"start estimate: cell cost {cost:.6g} not below the plain start's "
                      f"{plain:.6g}; plain start kept")
    names = [n for n, h in zip(("D0", "alpha", "D_offset"), lb[k:k + 3] == ub[k:k + 3],
                               strict=True) if h]
    held = f" ({', '.join(names)} held)" if names else ""
    return x, (f"start estimate from {cells.w.size} cells: cell cost {plain:.6g} -> "
               f"{cost:.6g}, D0 = {x[k]:.4g}, alpha = {x[k + 1]:.4g}, "
               f"D_offset = {x[k + 2]:.4g}{held}")


def start_from_data(problem, data, x0, lb, ub, stop=None):
    """(start, message, batches read, seconds): one pass over ``data``, then
    ``estimate``; start is ``x0`` where the estimate is not taken."""
    t0 = time.perf_counter()
    cells, batches = cell_sums(problem.spec, data, stop)
    x, message = estimate(problem.spec, cells, x0, lb, ub)
    return (x0 if x is None else x), message, batches, time.perf_counter() - t0


def _shear_decay(spec, cells, phys) -> np.ndarray:
    """sinc² of the shear's phase per cell for laminar ``phys`` (7 values)."""
    ig = np.abs(_integral(spec, cells, *phys[3:6]))
    cos_d = np.cos(np.deg2rad(phys[6] - np.asarray(spec.phi_deg)))[cells.angle]
    return np.sinc(0.5 * spec.q * spec.gap_h * cos_d * ig / np.pi) ** 2


def laminar_cell_cost(spec, cells, x) -> float:
    """``cell_cost`` of a laminar vector: the diffusion's decay times the shear's sinc²."""
    con, off, phys = spec.split(np.asarray(x, np.float64))
    s = cells.angle if spec.scaling != "shared" else np.zeros_like(cells.angle)
    g = np.exp(-spec.q ** 2 * np.abs(_integral(spec, cells, *phys[:3])))
    m = off[s] + con[s] * g * _shear_decay(spec, cells, phys)
    return 0.5 * float(np.sum(cells.wyy - 2 * m * cells.wy + m * m * cells.w))


def _shear_rows(spec, lb, ub) -> np.ndarray:
    """(gamma_dot_t0, beta, gamma_dot_t_offset, phi0) rows of the laminar grid: a constant
    shear rate (beta and the offset at 0, or their bound nearest to it) from the least
    the bounds allow (no influence) through the rates whose sinc phase q h gdot tau / 2
    reaches 0.1 to 10 over the window's lags, times phi0 inside its bounds."""
    k = 2 * spec.n_scaling_sets + 3
    t = spec.frame_times()
    qh = spec.q * spec.gap_h
    lags = (spec.dt, max(float(t[-1] - t[0]), spec.dt))
    rates = np.r_[0.0, np.geomspace(0.2 / (qh * lags[1]), 20.0 / (qh * lags[0]), N_SHEAR)]
    g0 = np.unique(np.clip(rates, lb[k], ub[k]))
    # the middles of N_PHI0 equal parts: no start on phi0's bounds (a fit that stays on
    # the bound it started on is refitted from inside the box, driver.START_BOUND_STEP)
    phi0 = np.unique(lb[k + 3] + (np.arange(N_PHI0) + 0.5) / N_PHI0 * (ub[k + 3] - lb[k + 3]))
    g, p = (v.ravel() for v in np.meshgrid(g0, phi0, indexing="ij"))
    beta = np.clip(0.0, lb[k + 1], ub[k + 1])
    offset = np.clip(0.0, lb[k + 2], ub[k + 2])
    return np.stack([g, np.full_like(g, beta), np.full_like(g, offset), p], axis=1)


def _whence(x0, lb, ub, k) -> str:
    """Why a laminar start got the estimate: a corner, else a shear that decorrelates."""
    return ("from a corner of the box" if corner_start(x0[k:], lb[k:], ub[k:]) else
            "the start's shear decorrelates every frame pair")


def _laminar_estimate(spec, cells, x0, lb, ub) -> tuple[np.ndarray | None, str]:
    """A laminar start from a corner of the box: J(t) from the static estimate on the
    cells (the shear off: its sinc is 1), then the shear on a grid (``_shear_rows``) with
    each set's contrast and offset solved linearly; taken where its cell cost is below the
    corner's. A corner's shear puts most starts where the sinc's minima trap the fit."""
    K = spec.n_scaling_sets
    k = 2 * K
    sets = _scaling_sets(spec, cells)
    if sets is None:
        return None, "start estimate: a scaling set without data; plain start kept"
    _, starts = sets
    static = replace(spec, mode="static")
    xs = None
    if np.any(lb[k:k + 3] < ub[k:k + 3]):  # J(t) held entirely: only the shear is looked for
        xs, _ = estimate(static, cells, x0[:k + 3], lb[:k + 3], ub[:k + 3])
    xs = x0[:k + 3] if xs is None else xs
    decay = np.exp(-spec.q ** 2 * np.abs(_integral(spec, cells, *xs[k:k + 3])))
    held = _held(lb, ub)
    best, rows = (math.inf, None), _shear_rows(spec, lb, ub)
    for row in rows:
        phys = np.r_[xs[k:k + 3], row]
        phys = np.where(np.isnan(held[k:]), phys, held[k:])
        g = (decay * _shear_decay(spec, cells, phys))[None, :]
        con, off, cost = _linear_scaling(g, cells, starts, held[:K], held[K:k])
        ok = np.all((con >= lb[:K]) & (con <= ub[:K]) & (off >= lb[K:k]) & (off <= ub[K:k]))
        if ok and float(cost[0]) < best[0]:
            best = (float(cost[0]), spec.pack(con[0], off[0], phys))
    corner = laminar_cell_cost(spec, cells, x0)
    cost, x = best
    if x is None or not cost < corner:
        return None, (f"start estimate (laminar, {_whence(x0, lb, ub, k)}): cell cost "
                      f"{cost:.6g} not below the start's {corner:.6g}; the start kept")
    x = np.where(np.isnan(held), x, held)
    names = spec.physical_names
    return x, (f"start estimate (laminar, {_whence(x0, lb, ub, k)}) from {cells.w.size} "
               f"cells: cell cost {corner:.6g} -> {cost:.6g}, "
               + ", ".join(f"{n} = {v:.4g}" for n, v in zip(names, x[k:], strict=True)))
