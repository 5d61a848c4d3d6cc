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

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from homodyne.optimization.coordinates import PowerLawCoordinates
from homodyne.optimization.driver import not_moved_from, run_fit
from homodyne.optimization.exceptions import NLSQNumericalError
from homodyne.optimization.interfaces import DataSource
from homodyne.optimization.passes import FitMonitor
from homodyne.optimization.result import FitResult
from homodyne.optimization.settings import EngineOptions, RestartSettings

log = logging.getLogger(__name__)

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
    for box_start in starts[1:]:
        row = (box_start - lb) / np.where(ub > lb, ub - lb, 1.0)  # the Sobol numbers back
        x = box_start.copy()
        x[:n_scaling] = x0[:n_scaling]
        with np.errstate(all="ignore"):  # t_ref^-alpha overflows for |alpha| in the hundreds
            u = coords.to_internal(x)
            for (i, a, o), (lo, hi) in zip(coords.triples, scales, strict=True):
                level = math.exp(math.log(lo) + row[o] * math.log(hi / lo))
                u[a] = lb[a] + row[a] * (ub[a] - lb[a])
                frac = 2.0 * row[i] - 1.0
                if lb[i] >= 0:
                    frac = abs(frac) * (1.0 if u[a] >= 0 else -1.0)
                u[o], u[i] = level, frac * level
            start = np.clip(coords.into_box(coords.to_user(u), lb, ub), lb, ub)
        # no such start in the user's coordinates: the Sobol point of the user's box instead
        out.append(start if np.all(np.isfinite(start)) else box_start)
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
    runs the full fit from x (the caller's monitor, progress and recovery). Its wall time,
    passes and iterations are those of the whole run (screening and finishing; the
    restarts block splits them). A signal stops it at once with the best parameters
    known so far (``interrupted``)."""
    run = _Run(time.perf_counter(), screening_data(data, options), int(data.n_points))
    starts = spread_starts(x0, lb, ub, settings.restarts, settings.seed)
    coords = PowerLawCoordinates.for_problem(problem, lb, ub) \
        if options.internal_coordinates and bounds_finite(lb, ub) else None
    if coords is not None:
        starts = spread_in_internal(starts, np.asarray(x0, np.float64), lb, ub, coords,
                                    power_law_scales(problem, coords),
                                    2 * problem.spec.n_scaling_sets)
    one_level = replace(options, coarse=False)
    screened: list[Screened] = []
    for k, start in enumerate(starts):
        try:
            fit = run_fit(problem, run.screen, start, lb, ub, options=one_level,
                          strategy=strategy, monitor=FitMonitor())
        except NLSQNumericalError:  # the model overflows at this start (alpha near wide
            # bounds): one start less, not the whole fit (x0 failing alone: below)
            log.warning("multi-start: start %d of %d skipped: the model or its gradient is "
                        "not finite there", k + 1, len(starts))
            continue
        run.screening.append(fit)
        if fit.interrupted_by is not None:  # a signal: stop here, as a single fit would
            return run.stopped_screening(fit, screened, k, len(starts))
        screened.append(Screened(start, fit))
    run.screening_s = time.perf_counter() - run.t0
    usable = [s for s in screened if math.isfinite(s.fit.cost)]
    if not usable:
        best = finish(np.asarray(x0, np.float64))
        run.finishing.append(best)
        return run.account(best)
    usable.sort(key=lambda s: s.fit.cost)
    # the best start of each distinct minimum, best minima first
    leaders: list[Screened] = []
    for s in usable:
        if not any(same_minimum(s.fit, lead.fit) for lead in leaders):
            leaders.append(s)
    n_finish = min(len(leaders), max(settings.finish_best, 1))
    finished: list[tuple[Screened, FitResult]] = []
    for k, lead in enumerate(leaders[:n_finish]):
        fit = finish(lead.fit.parameters)
        run.finishing.append(fit)
        if fit.interrupted_by is not None:  # stopped: not finished, nor the next ones
            return run.stopped_finishing(fit, lead, finished, k, n_finish, len(starts),
                                         screened)
        finished.append((lead, fit))
    lead, best = min(finished, key=lambda pair: pair[1].cost)
    reached = sum(same_minimum(s.fit, lead.fit) for s in screened)
    # "did not move" is judged against the user's start, not the screened start finished
    best.not_moved = not_moved_from(best.parameter_names, best.parameters, x0,
                                     np.asarray(lb) < np.asarray(ub))
    best.restarts = dict(starts=len(starts), reached_best=int(reached),
                         distinct_minima=len(leaders), finished=len(finished),
                         screening_points=int(run.screen.n_points),
                         best_start=[float(v) for v in lead.start],
                         screening_chi2=[float(s.fit.chi_squared) for s in screened])
    skipped = len(starts) - len(screened)
    best.messages.append(f"multi-start: best of {len(starts)} starts"
                         f"{f' ({skipped} skipped: model not finite there)' if skipped else ''}"
                         ", reached by "
                         f"{reached}; {len(leaders)} distinct minima on "
                         f"{run.screen.n_points:,} points, {len(finished)} finished on the "
                         "full data")
    return run.account(best)


def _best_of(n: int, one: str, many: str) -> str:
    return f"the best of the {n} {many}" if n > 1 else f"the one {one}"


@dataclass
class _Run:
    """One multi-start run: its screening level and the fits made, for the whole run's
    account (wall time, passes, iterations) and the best result after a signal."""

    t0: float
    screen: DataSource
    n_points: int
    screening: list[FitResult] = field(default_factory=list)
    finishing: list[FitResult] = field(default_factory=list)
    screening_s: float | None = None

    def account(self, result: FitResult, **block) -> FitResult:
        """``result`` with the whole run's wall time, passes and iterations; its restarts
        block (``block`` added) with the screening and finishing shares."""
        total = time.perf_counter() - self.t0
        screening_s = total if self.screening_s is None else self.screening_s
        # summed before ``result`` (one of the fits) is changed
        s_passes = sum(f.passes for f in self.screening)
        f_passes = sum(f.passes for f in self.finishing)
        f_coarse = sum(f.coarse_passes for f in self.finishing)
        iterations = sum(f.iterations for f in self.screening + self.finishing)
        subsample = self.screen.n_points < self.n_points  # else the screening was full data
        result.passes = f_passes + (0 if subsample else s_passes)
        result.coarse_passes = f_coarse + (s_passes if subsample else 0)
        if subsample and not result.coarse_points:
            result.coarse_points = int(self.screen.n_points)
        result.iterations = iterations
        result.wall_time_s = total
        result.restarts = {**(result.restarts or {}), **block,
                           "screening_passes": int(s_passes),
                           "screening_seconds": float(screening_s),
                           "finishing_passes": int(f_passes),
                           "finishing_seconds": float(total - screening_s)}
        return result

    def screened_on(self, chi2_note: bool = True) -> str:
        """Where the screening fits ran: a subsample, or (small data) all the points (a
        stop there said 'on a 239,400-point subsample, not on the full data' of data of
        239,400 points)."""
        if self.screen.n_points < self.n_points:
            note = " (chi2 and points are the subsample's)" if chi2_note else ""
            return f"a {self.screen.n_points:,}-point subsample, not on the full data{note}"
        return f"the full data ({self.n_points:,} points: too few for a subsample)"

    def stopped_screening(self, fit: FitResult, screened: list[Screened], k: int,
                          n_starts: int) -> FitResult:
        """After a signal while start ``k`` was screened: the best start screened in full
        so far (its χ² and points those of the screening subsample), else that start's fit
        as it stood."""
        done = [s for s in screened if math.isfinite(s.fit.cost)]
        where = (f"interrupted by {fit.interrupted_by} while screening start {k + 1} of "
                 f"{n_starts} (multi-start): the parameters are ")
        if done:
            best = min(done, key=lambda s: s.fit.cost)
            result = replace(best.fit, messages=list(best.fit.messages), converged=False,
                             interrupted_by=fit.interrupted_by)
            result.stop_reason = where + (
                f"{_best_of(len(done), 'start', 'starts')} screened so far, fitted on "
                f"{self.screened_on()}")
            start = best.start
        else:
            result, start = fit, None
            result.stop_reason = where + (
                f"the fit of start {k + 1} as it stood, on {self.screened_on(False)}")
        return self.account(result, starts=n_starts, interrupted_while="screening",
                            screened=len(done), screening_points=int(self.screen.n_points),
                            best_start=None if start is None else [float(v) for v in start],
                            screening_chi2=[float(s.fit.chi_squared) for s in screened])

    def stopped_finishing(self, fit: FitResult, lead: Screened, finished: list, k: int,
                          n_finish: int, n_starts: int, screened: list[Screened]) -> FitResult:
        """After a signal while minimum ``k`` (``lead``) was finished on the full data: the
        best minimum finished so far, else the stopped fit if it evaluated a point on the
        full data, else ``lead``'s screening fit (its χ² and points the subsample's)."""
        where = (f"interrupted by {fit.interrupted_by} while finishing minimum {k + 1} of "
                 f"{n_finish} on the full data (multi-start): the parameters are ")
        if finished:
            best_lead, best = min(finished, key=lambda pair: pair[1].cost)
            result = replace(best, messages=list(best.messages), converged=False,
                             interrupted_by=fit.interrupted_by)
            result.stop_reason = where + (
                f"{_best_of(len(finished), 'minimum', 'minima')} finished so far")
            start = best_lead.start
        elif fit.n_points > 0:
            result, start = fit, lead.start
            result.stop_reason = where + "that fit's best so far"
        else:  # stopped before its first pass was complete: nothing evaluated on the full data
            result = replace(lead.fit, messages=list(lead.fit.messages), converged=False,
                             interrupted_by=fit.interrupted_by)
            result.stop_reason = where + (
                f"the best screened minimum, fitted on {self.screened_on()}")
            start = lead.start
        return self.account(result, starts=n_starts, interrupted_while="finishing",
                            screened=len(screened), finished=len(finished),
                            screening_points=int(self.screen.n_points),
                            best_start=None if start is None else [float(v) for v in start],
                            screening_chi2=[float(s.fit.chi_squared) for s in screened])
