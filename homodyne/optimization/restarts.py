"""Deterministic multi-start: fits from starts spread over the bounds, the best one kept.

A single start can stop at a local minimum (on measured two-time windows Δχ² ≈ 0.9 above
the best one in 2 of 7 fits). The user's start and ``restarts - 1`` points of a scrambled
Sobol sequence with a fixed seed (log-uniform over bounds spanning decades; for two-time
fits each power law drawn in the internal coordinates over the values the data resolve,
``spread_in_internal``: drawn in the user's box, D_offset of hundreds puts almost every
start on the plateau where c2 is flat) are each fitted on the coarsest subsample
(cheap: one level of the coarse-to-fine ladder), the best
``finish_best`` distinct minima are finished on the full data, and the best of those is
the result. It says how many starts reached its minimum (at the screening level: Δχ² and
every parameter within a tolerance of it).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from homodyne.optimization.coordinates import PowerLawCoordinates
from homodyne.optimization.driver import run_fit
from homodyne.optimization.passes import FitMonitor
from homodyne.optimization.result import FitResult
from homodyne.optimization.settings import EngineOptions, RestartSettings

# two screening fits reached the same minimum when their χ² differ by at most this many
# units of the reduced χ² and every determined parameter by at most this many SE
SAME_CHI2 = 0.1
SAME_SE = 0.1
# bounds spanning more than this ratio (both positive) are sampled log-uniformly
LOG_SPAN = 1e3


def spread_starts(x0, lb, ub, n_starts: int, seed: int = 0) -> list[np.ndarray]:
    """``x0`` then ``n_starts - 1`` points of a scrambled Sobol sequence (``seed``) over
    the box; fixed parameters (lb == ub) keep their value, an infinite side is replaced
    by x0 ± 10 max(|x0|, 1)."""
    from scipy.stats import qmc

    x0, lb, ub = (np.asarray(v, np.float64) for v in (x0, lb, ub))
    starts = [x0.copy()]
    free = np.flatnonzero(lb < ub)
    if n_starts <= 1 or free.size == 0:
        return starts
    reach = 10.0 * np.maximum(np.abs(x0), 1.0)
    lo = np.where(np.isfinite(lb), lb, x0 - reach)[free]
    hi = np.where(np.isfinite(ub), ub, x0 + reach)[free]
    log = (lo > 0) & (hi / np.where(lo > 0, lo, 1.0) > LOG_SPAN)
    # 2^m points keep the Sobol sequence balanced; the first n - 1 are used
    m = max(1, math.ceil(math.log2(n_starts - 1)))
    u = qmc.Sobol(free.size, scramble=True, seed=seed).random_base2(m)[: n_starts - 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lo, log_hi = np.log(np.where(log, lo, 1.0)), np.log(np.where(log, hi, 1.0))
    for row in u:
        x = x0.copy()
        x[free] = np.where(log, np.exp(log_lo + row * (log_hi - log_lo)), lo + row * (hi - lo))
        starts.append(np.clip(x, lb, ub))
    return starts


def power_law_scales(problem, coords: PowerLawCoordinates) -> list[tuple[float, float]]:
    """Per power law of ``coords``, the range of its value at t_ref that the data resolve:
    J whose decay exp(-q^2 J tau) reaches 1/e between one frame and the whole window,
    and a shear rate whose sinc phase q h gdot tau reaches 1 over the same lags."""
    spec = problem.spec
    t = spec.frame_times()
    lags = (spec.dt, max(float(t[-1] - t[0]), spec.dt))
    per = [spec.q * spec.q, spec.q * spec.gap_h]
    return [(1.0 / (per[k] * lags[1]), 1.0 / (per[k] * lags[0]))
            for k in range(len(coords.triples))]


def spread_in_internal(starts, x0, lb, ub, coords: PowerLawCoordinates, scales,
                       n_scaling: int) -> list[np.ndarray]:
    """The Sobol starts with each power law re-drawn in the internal coordinates from the
    same Sobol numbers: level = its value at t_ref, log-uniform over ``scales``; alpha
    uniform over its bounds; slope a fraction in [-1, 1] of the level (on alpha's side
    where the amplitude must be >= 0), moved into the user's box at the same level and
    slope. Contrast and offset (the first ``n_scaling`` entries) keep x0: they enter
    linearly, and user-box draws of them mostly start where the data are not resolved."""
    out = [starts[0]]
    for x in starts[1:]:
        row = (x - lb) / np.where(ub > lb, ub - lb, 1.0)  # the Sobol numbers back
        x = x.copy()
        x[:n_scaling] = x0[:n_scaling]
        u = coords.to_internal(x)
        for (i, a, o), (lo, hi) in zip(coords.triples, scales, strict=True):
            level = math.exp(math.log(lo) + row[o] * math.log(hi / lo))
            u[a] = lb[a] + row[a] * (ub[a] - lb[a])
            frac = 2.0 * row[i] - 1.0
            if lb[i] >= 0:
                frac = abs(frac) * (1.0 if u[a] >= 0 else -1.0)
            u[o], u[i] = level, frac * level
        out.append(np.clip(coords.into_box(coords.to_user(u), lb, ub), lb, ub))
    return out


def same_minimum(a: FitResult, b: FitResult) -> bool:
    """Whether two fits of the same data stopped at the same minimum (Δχ² and every
    determined parameter within SAME_CHI2 reduced-χ² units and SAME_SE of ``b``'s SE)."""
    chi2r = max(b.reduced_chi_squared, 1e-300)
    if abs(a.chi_squared - b.chi_squared) > SAME_CHI2 * chi2r:
        return False
    se = b.uncertainties
    ok = np.isfinite(se) & (se > 0)
    return bool(np.all(np.abs(a.parameters - b.parameters)[ok] <= SAME_SE * se[ok]))


def bounds_finite(lb, ub) -> bool:
    """Whether every bound is finite (the Sobol numbers can be read back from a start)."""
    return bool(np.all(np.isfinite(lb)) and np.all(np.isfinite(ub)))


@dataclass(frozen=True)
class Screened:
    """One start and its fit on the screening subsample."""

    start: np.ndarray
    fit: FitResult


def screening_data(data, opts: EngineOptions):
    """The coarsest level of the coarse-to-fine ladder (the data themselves when they
    have none)."""
    if not opts.coarse or data.n_points <= 2 * opts.coarse_points:
        return data
    return data.subsample(opts.coarse_points, opts.batch_size, dtype=np.float32)


def fit_with_restarts(problem, data, x0, lb, ub, *, settings: RestartSettings,
                      options: EngineOptions, finish: Callable[[np.ndarray], FitResult],
                      strategy: str = "STANDARD") -> FitResult:
    """The best of ``settings.restarts`` fits (see the module docstring). ``finish(x)``
    runs the full fit from x (the caller's monitor, progress and recovery)."""
    starts = spread_starts(x0, lb, ub, settings.restarts, settings.seed)
    coords = PowerLawCoordinates.for_problem(problem, lb, ub) \
        if options.internal_coordinates and bounds_finite(lb, ub) else None
    if coords is not None:
        starts = spread_in_internal(starts, np.asarray(x0, np.float64), lb, ub, coords,
                                    power_law_scales(problem, coords),
                                    2 * problem.spec.n_scaling_sets)
    screen = screening_data(data, options)
    one_level = replace(options, coarse=False)
    screened = []
    for start in starts:
        fit = run_fit(problem, screen, start, lb, ub, options=one_level, strategy=strategy,
                      monitor=FitMonitor())
        if fit.interrupted_by is not None:  # a signal: stop here, as a single fit would
            return fit
        screened.append(Screened(start, fit))
    usable = [s for s in screened if math.isfinite(s.fit.cost)]
    if not usable:
        return finish(np.asarray(x0, np.float64))
    usable.sort(key=lambda s: s.fit.cost)
    # the best start of each distinct minimum, best minima first
    leaders: list[Screened] = []
    for s in usable:
        if not any(same_minimum(s.fit, lead.fit) for lead in leaders):
            leaders.append(s)
    finished = []
    for lead in leaders[: max(settings.finish_best, 1)]:
        fit = finish(lead.fit.parameters)
        if fit.interrupted_by is not None:  # stopped: not finished, nor the next ones
            return fit
        finished.append((lead, fit))
    lead, best = min(finished, key=lambda pair: pair[1].cost)
    reached = sum(same_minimum(s.fit, lead.fit) for s in screened)
    best.restarts = dict(starts=len(starts), reached_best=int(reached),
                         distinct_minima=len(leaders), finished=len(finished),
                         screening_points=int(screen.n_points),
                         best_start=[float(v) for v in lead.start],
                         screening_chi2=[float(s.fit.chi_squared) for s in screened])
    best.messages.append(f"multi-start: best of {len(starts)} starts, reached by "
                         f"{reached}; {len(leaders)} distinct minima on {screen.n_points:,} "
                         f"points, {len(finished)} finished on the full data")
    return best
