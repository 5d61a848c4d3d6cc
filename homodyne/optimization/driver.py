"""Runs one fit: coarse stage on a subsample, full passes, then a filled ``FitResult``."""

from __future__ import annotations

import hashlib
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from homodyne.jaxconf import jax
from homodyne.memory import peak_rss_mb
from homodyne.optimization.checkpoint_session import SolverSnapshot
from homodyne.optimization.coordinates import PowerLawCoordinates, SolverSpace
from homodyne.optimization.covariance import covariance_from_normal
from homodyne.optimization.engine import EngineOptions, solve_lm, stopped
from homodyne.optimization.exceptions import NLSQNumericalError, StopFit
from homodyne.optimization.fixed import FreeSubspace
from homodyne.optimization.geodesic import supports
from homodyne.optimization.internal_stage import (
    _better_end,
    _chain,
    _geodesic,
    _internal_then_user,
    _report_edges,
    _unevaluated,
)
from homodyne.optimization.passes import FitMonitor, PassRunner, compile_ahead
from homodyne.optimization.precision import (
    evaluation_error,
    residual_variance_floor,
    rounding_error,
)
from homodyne.optimization.result import FitResult
from homodyne.optimization.start_estimate import applies, start_from_data
from homodyne.stopsignals import fit_stop_signals

if TYPE_CHECKING:
    from homodyne.optimization.interfaces import DataSource, Problem




def _lm_kwargs(opts: EngineOptions, coarse: bool, eval_error=None, rounding=None) -> dict:
    return dict(
        eval_error=eval_error,
        rounding_error=rounding,
        max_iterations=opts.coarse_max_iterations if coarse else opts.max_iterations,
        step_tol_se=opts.coarse_step_tol_se if coarse else opts.step_tol_se,
        gtol=1e-3 if coarse else opts.gtol,
        ftol=opts.ftol,
    )


def fingerprint(*parts) -> str:
    """SHA-256 of the JSON form of everything a checkpoint must match (data, settings)."""
    def norm(v):
        if isinstance(v, np.ndarray):
            return [float(a) for a in v.ravel()] + list(v.shape)
        if isinstance(v, dict):
            return {str(k): norm(x) for k, x in sorted(v.items())}
        if isinstance(v, list | tuple):
            return [norm(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return repr(v)
        return v

    return hashlib.sha256(json.dumps(norm(list(parts)), sort_keys=True, default=str)
                          .encode()).hexdigest()


def run_fit(problem: Problem, data: DataSource, x0: np.ndarray, lb: np.ndarray,
            ub: np.ndarray, *, options: EngineOptions | None = None,
            strategy: str = "STANDARD", monitor: FitMonitor | None = None,
            resume: bool = False, recovery_sequence=("perturb_parameters",),
            n_devices: int = 1) -> FitResult:
    """Fit ``problem`` on ``data`` from ``x0`` within [lb, ub]: float64 vectors of one
    length with x0 inside, as ``nlsq_wrapper.validate_start`` returns them."""
    opts = options or EngineOptions()
    mon = monitor or FitMonitor()
    if opts.geodesic_acceleration and not supports(problem):
        raise ValueError("geodesic_acceleration is built for two-time fits only; set "
                         "optimization.geodesic_acceleration: false for this fit")
    if opts.geodesic_acceleration and mon.checkpoints is not None:
        raise ValueError("geodesic_acceleration cannot be combined with checkpoints (its "
                         "directional passes are not replayed on resume): disable one")
    t0 = time.perf_counter()
    ck = mon.checkpoints
    if ck is not None:
        ck.acquire()
    try:
        with _signals_to(mon):
            if ck is not None and resume:
                mon.load_resume()
            result = _stages(problem, data, x0, lb, ub, opts, strategy, mon, t0,
                             recovery_sequence, n_devices)
        if mon.signal_received is not None and not mon.signal_acted_on:
            # it came after the fit's last stop check (the end of the passes, its final
            # checkpoint, the result): the caller's handler gets it, as a moment later (the
            # CLI: its one line, nothing written); it was swallowed, or stopped a finished fit
            signal.raise_signal(mon.signal_received)
        return result
    finally:
        mon.flush()
        if ck is not None:
            ck.release()


@contextmanager
def _signals_to(mon: FitMonitor):
    """SIGINT/SIGTERM/SIGHUP only set a flag; the pass stops at the next chunk boundary (after
    saving a checkpoint) so nothing half-written is left. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        mon.signal_received = signum

    old = {s: signal.signal(s, handler) for s in fit_stop_signals()}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stages(problem, data, x0, lb, ub, opts, strategy, mon, t0, recovery_sequence, n_devices):
    # the solver sees only the free parameters (lb == ub fixes one), first in the
    # internal coordinates of the power laws where there are any (coordinates.py), then
    # in the user's, where the user's bounds are a box
    free = FreeSubspace.from_bounds(x0, lb, ub)
    flb, fub = free.reduce(lb), free.reduce(ub)
    coords = PowerLawCoordinates.for_problem(problem, lb, ub) \
        if opts.internal_coordinates else None
    coarse_passes = coarse_points = 0
    messages = []
    start, start_seconds = x0, []  # a data-driven start's pass over the full data
    space = SolverSpace(coords, x0, lb, ub)
    x = space.start

    def eval_error(v):
        return evaluation_error(problem, space.user(v))

    def rounding(v):  # a stall with residuals at this level is noise-free data, fitted
        return rounding_error(problem, space.user(v))

    def track(st):
        mon.lm_info = SolverSnapshot(space.user(st.x), st.ne.cost, st.iteration, st.lam)

    edge: dict[int, str] = {}  # exponent index -> where the power law's optimum lies

    def finish(st):
        end = space.state_in_user(st, free)
        if stopped(end):
            end = _best_so_far(end, mon.passes, free, lb, ub)
        result = build_result(problem, end, x0, lb, ub, free,
                              strategy=strategy, mon=mon, coarse_passes=coarse_passes,
                              coarse_points=coarse_points, batch_size=data.batch_size,
                              t0=t0, messages=messages)
        result.passes += len(start_seconds)
        result.pass_seconds = start_seconds + result.pass_seconds
        return _note_negative_j(_report_edges(result, coords, edge), problem)

    try:
        levels = coarse_levels(data, opts, stop=lambda: mon.signal_received is not None)
        if levels and n_devices == 1:  # the full passes' kernel compiles meanwhile
            compile_ahead(problem, data, x0)
        if opts.start_estimate and applies(problem, x0, lb, ub):
            # on the densest coarse level where there is one (a coarse pass), else a full
            # pass; deterministic, so a resumed fit computes it again (counted again) and
            # replays its checkpoint's passes from the same start
            source = levels[-1] if levels else data
            est, line, _, seconds = start_from_data(
                problem, source, x0, lb, ub, stop=lambda: mon.signal_received is not None)
            if levels:
                coarse_passes += 1
                line += f" (on the coarse level of {source.n_points:,} points)"
            else:
                start_seconds.append(seconds)
            if mon.signal_received is not None:  # the cells may be partial: no path from them
                # reported as stopped at the user's start as given, the estimate unused
                messages.append(f"{line}; discarded: the fit stopped before its first pass")
                space = SolverSpace(None, x0, lb, ub)
                x = space.start
                mon.stop_before_passes("the start estimate")
            messages.append(line)
            start = est
            space = SolverSpace(coords, start, lb, ub)
            x = space.start
        mon.begin_path(start)
        for sub in levels:
            # each level starts a few of its own standard errors from its optimum, so
            # the slow walk along correlated valleys happens on cheap levels
            runner = PassRunner(problem, sub, stage="coarse", monitor=mon)
            st = solve_lm(space.evaluator(runner.evaluate), x, *space.bounds,
                          initial_damping=opts.initial_damping,
                          on_iteration=track, gn_trust_se=_trust(sub.n_points, coarse_points),
                          geodesic=_geodesic(opts, problem, runner, space),
                          **_lm_kwargs(opts, True, eval_error, rounding))
            coarse_passes += st.evaluations
            coarse_points = sub.n_points
            x = st.x
            messages.append(f"coarse level of {sub.n_points:,} points: {st.evaluations} "
                            f"passes, {st.reason}")
            if stopped(st) or mon.signal_received is not None:
                return finish(st)
        runner = PassRunner(problem, data, stage="full", monitor=mon, n_devices=n_devices)
        trust = _trust(data.n_points, coarse_points)
        full_kw = _lm_kwargs(opts, False, eval_error, rounding)
        if coords is None:
            st = solve_lm(space.evaluator(runner.evaluate), x, *space.bounds,
                          initial_damping=opts.initial_damping, on_iteration=track,
                          gn_trust_se=trust, geodesic=_geodesic(opts, problem, runner, space),
                          **full_kw)
        else:
            def to_user(x_user):  # the internal stage hands over to the user's coordinates
                nonlocal space, x
                space, x = SolverSpace(None, x0, lb, ub), x_user.copy()

            def internal_fit(sp, v, from_x, edges):
                """(the space where it stopped or None, its state)"""
                return _internal_then_user(
                    problem, coords, sp, v, from_x, lb, ub, free, flb, fub, runner, opts,
                    track, trust, full_kw, edges, messages, to_user,
                    signalled=lambda: mon.signal_received is not None)

            stop_space, st = internal_fit(space, x, start, edge)
            if stop_space is not None:
                space = stop_space
                return finish(st)
        evaluate = free.evaluator(runner.evaluate)
        for name in recovery_sequence if mon.applicator is not None and \
                mon.signal_received is None else ():
            if st.converged or not st.reason.startswith("damping overflow"):
                break
            # the solver stalled: restart once from a perturbed copy of the best point
            x_new = mon.applicator.apply(name, st.x, (flb, fub))
            mon.record_restart(mon.applicator.describe(name))
            try:
                st2 = solve_lm(evaluate, x_new, flb, fub, initial_damping=opts.initial_damping,
                               on_iteration=track, gn_trust_se=trust, **full_kw)
            except NLSQNumericalError as exc:  # the restart point is unusable: keep the best
                messages.append(f"recovery {name} gave up: {exc}")
                continue
            except StopFit as stop:  # in the restart's first pass: the best point stands
                st.reason, st.converged = str(stop), False
                break
            st2.evaluations += st.evaluations
            if st2.ne.cost <= st.ne.cost:
                st = st2
            elif stopped(st2):  # the best point so far, with the stop as its reason
                st.reason, st.converged = st2.reason, False
            if stopped(st2):
                break
        if st.converged and mon.signal_received is None:
            if coords is None:
                def refit(from_x):
                    return solve_lm(evaluate, free.reduce(from_x), flb, fub,
                                    initial_damping=opts.initial_damping, on_iteration=track,
                                    gn_trust_se=trust, **full_kw)
            else:  # through the internal stage again (full data), its own edge labels
                edge_refit: dict[int, str] = {}

                def refit(from_x):  # a state over the user's free parameters, also stopped
                    sp = _mirrored_start(coords, from_x, lb, ub)
                    stop_space, st_ = internal_fit(sp, sp.start, from_x, edge_refit)
                    return st_ if stop_space is None else stop_space.state_in_user(st_, free)
            st_first = st
            # (the fit's start: a start estimate replaces the user's, lam14)
            st = _refit_off_start_bounds(st, start, lb, ub, free, refit, messages,
                                         problem.parameter_names,
                                         signalled=lambda: mon.signal_received is not None)
            if coords is not None and st is not st_first and not stopped(st):
                edge.clear()
                edge.update(edge_refit)
    except StopFit as stop:  # stopped during a stage's very first pass
        st = _unevaluated(x, str(stop))
    if not mon.signal_acted_on:  # (a signal after the last pass: saved, then re-raised)
        mon.save_final(space.user(st.x))
    return finish(st)


# a fit that ends on a bound its start lay on and never left is fitted once more from
# this fraction of the range inside (opt14 F8): near D_offset's bound J is so large that
# c2 is flat in it, and the first step takes the rest to their optimum there, a KKT point.
# Measured: seed 2073 needs >= 0.03, a 2-angle case >= 0.1. A fit in internal coordinates
# is refitted through that stage (probe21 N2, a start on the lower corner: _mirrored_start)
START_BOUND_STEP = 0.25


def _refit_off_start_bounds(st, x0, lb, ub, free, refit, messages, names,
                            signalled=lambda: False):
    """A converged fit with a free parameter still on the bound its start put it on:
    refit (``refit``: user start -> state over the free parameters) from the start with
    every parameter that started on a bound moved START_BOUND_STEP of its range into the
    box; the better end is kept (converged first, then the lower cost) and the messages say
    so. Counts include both. A refit stopped (a signal: ``signalled()``, also in its first
    pass) ends the fit at the lower-cost point so far, with the stop as its reason."""
    x, x0 = free.expand(st.x), np.asarray(x0, np.float64)
    span = ub - lb
    on_lo, on_hi = free.free & (x0 <= lb), free.free & (x0 >= ub)
    stay = (on_lo | on_hi) & (np.abs(x - x0) <= 1e-12 * np.maximum(np.abs(x0), 1e-300))
    if not stay.any() or not np.all(np.isfinite(span[on_lo | on_hi])):
        return st
    start = x0.copy()
    start[on_lo] = lb[on_lo] + START_BOUND_STEP * span[on_lo]
    start[on_hi] = ub[on_hi] - START_BOUND_STEP * span[on_hi]
    try:
        st2 = refit(start)
    except StopFit as stop:  # in the refit's first pass: no point of its own yet
        st2 = _unevaluated(free.reduce(start), str(stop))
        st2.evaluations = 0
    spent = st2.evaluations
    _chain(st2, st)
    if stopped(st2) or signalled():
        if not st2.ne.cost < st.ne.cost:  # (NaN: unevaluated) the first end is the best
            st2.x, st2.ne, st2.lam = st.x, st.ne, st.lam
        st2.converged = False
        return st2
    kept = _better_end(st, st2)
    moved = ", ".join(f"{names[k]} = {start[k]:.6g}" for k in np.flatnonzero(on_lo | on_hi))
    messages.append(
        f"{', '.join(names[k] for k in np.flatnonzero(stay))} started on a bound and never "
        f"left it: refit from {moved} ({START_BOUND_STEP:g} of the range into the box): "
        f"{spent} passes, {st2.reason}; "
        + (f"its lower cost kept ({st2.ne.cost:.8g} < {st.ne.cost:.8g})" if kept is st2 else
           f"the first end kept (cost {st.ne.cost:.8g}; the refit's {st2.ne.cost:.8g})"))
    return kept


def _mirrored_start(coords: PowerLawCoordinates, x, lb, ub) -> SolverSpace:
    """The internal-coordinate space of a refit from user ``x``: each power law whose
    amplitude is held >= 0 (``held_triples``) and whose J(t_ref) < 0 there starts from its
    mirror image, slope and level negated. c2 depends on |∫J| only, so that is the same
    start with J(t_ref) > 0, the side every J(t) > 0 lies on; from J < 0 the held fit can
    only reach the bounds' optimum of -J (probe21 N2: a start on the lower corner, D0 1,
    alpha -2, D_offset -1000, J = t^-2 - 1000, ended at chi2 2.3x the optimum with
    D_offset on its bound and J < 0 at every frame; SciPy's TRF ends there too)."""
    space = SolverSpace(coords, x, lb, ub)
    u = space.free.expand(space.start)
    for i, _a, o in coords.held_triples(lb):
        if u[o] < 0:
            u[i], u[o] = -u[i], -u[o]
    return SolverSpace(coords, x, lb, ub, u0=u)


def _best_so_far(end, passes, free, lb, ub):
    """A stopped fit's point, in the user's coordinates and inside the user's box: the
    lowest-cost full pass of the whole fit (``passes``: every completed one, user vectors)
    where it beats ``end``'s own. A stop in a stage's first pass has no point of its own
    (``end`` is that stage's start, unevaluated: probe23 N1) and an internal-coordinate
    point can lie beyond the box (a held edge, a mirrored power law: D0 < 0). Without such
    a pass (a stop on a coarse level or before the first full pass) ``end`` stays,
    clipped into the box and unevaluated there where it lies beyond it."""
    x = free.expand(end.x)
    inside = bool(np.all((lb <= x) & (x <= ub)))
    # full passes' costs compare: batches are left out only in a stage's first pass, and a
    # pass with a later failed batch is a failed trial of cost inf (passes.PassRunner)
    best = min((r for r in passes if r.stage == "full" and math.isfinite(r.ne.cost)
                and np.all((lb <= r.x) & (r.x <= ub))),
               key=lambda r: r.ne.cost, default=None)
    if best is not None and not (inside and end.ne.cost <= best.ne.cost):
        end.x, end.ne, end.lam = free.reduce(best.x), free.reduce_equations(best.ne), math.nan
        return end
    if inside:
        return end
    clipped = _unevaluated(free.reduce(np.clip(x, lb, ub)), end.reason)
    clipped.evaluations, clipped.iteration, clipped.history = \
        end.evaluations, end.iteration, end.history
    return clipped


def _note_negative_j(result: FitResult, problem) -> FitResult:
    """Say so where the fitted J(t) is negative at every frame: c2 depends on |∫J| only,
    so that fit is the positive J(t) with D0 and D_offset negated (a mirror the bounds on
    D0 may exclude); a scientist reading D_offset < 0 must not take J for positive."""
    spec = getattr(problem, "spec", None)
    if spec is None or not np.all(np.isfinite(result.parameters)):
        return result
    i, a, o = (2 * spec.n_scaling_sets + k for k in range(3))
    d0, alpha, d_off = (float(result.parameters[k]) for k in (i, a, o))
    with np.errstate(all="ignore"):
        j = d0 * spec.frame_times() ** alpha + d_off
    if not np.all(j < 0):
        return result
    names = result.parameter_names
    note = (f"J(t) < 0 at every frame: c2 depends on |∫J| only, so this is the fit "
            f"J(t) = {-d0:.6g} t^{alpha:.6g} + {-d_off:.6g} > 0 ({names[i]} and {names[o]} "
            "negated)")
    where = result.power_law_optimum.get(names[a])
    result.power_law_optimum[names[a]] = f"{where}; {note}" if where else note
    return result


def not_moved_from(names, x, x0, free) -> list[str]:
    """Names of the free parameters whose value is still the start's (to 1e-12 relative)."""
    x, x0 = np.asarray(x, np.float64), np.asarray(x0, np.float64)
    same = np.asarray(free, bool) & (np.abs(x - x0) <= 1e-12 * np.maximum(np.abs(x0), 1e-300))
    return [n for n, b in zip(names, same, strict=True) if b]


def _trust(n_points: int, previous_level: int) -> float:
    """Gauss-Newton trust radius in this stage's standard errors: one standard error of
    the level it starts from (1 when there is none)."""
    return math.sqrt(n_points / previous_level) if previous_level else 1.0


def coarse_level_sizes(n_points: int, opts: EngineOptions, *, streamed: bool = False,
                       spill: bool = False) -> tuple[list[int], bool]:
    """Level sizes, smallest first: coarse_points x factor^k up to a quarter of the data
    and coarse_max_level_points; and whether the densest goes to a temporary file.
    Streamed data hold at most streaming_coarse_max_points in memory (constant memory):
    a bigger level spills to a file, or is left out when the data cannot spill."""
    if not opts.coarse or n_points <= 2 * opts.coarse_points:
        return [], False
    cap = opts.coarse_max_level_points
    if streamed and not spill:
        cap = min(cap, opts.streaming_coarse_max_points)
    sizes = [opts.coarse_points]
    while sizes[-1] * opts.coarse_level_factor <= min(n_points / 4, cap):
        sizes.append(sizes[-1] * opts.coarse_level_factor)
    return sizes, streamed and spill and sizes[-1] > opts.streaming_coarse_max_points


def coarse_levels(data: DataSource, opts: EngineOptions, stop=None) -> list[DataSource]:
    """Nested strided subsamples (sizes from ``coarse_level_sizes``), held as float32.
    One read of the data collects the densest level; the sparser ones are strided
    subsets of it. Streamed data are read with ``stop`` (a signal ends the read: no
    levels, the first full chunk then stops the fit with its checkpoint)."""
    sizes, to_file = coarse_level_sizes(data.n_points, opts,
                                        streamed=data.streamed, spill=data.can_spill)
    if not sizes:
        return []
    kw: dict = {"to_file": True} if to_file else {}
    if data.streamed and stop is not None:
        kw["stop"] = stop
    dense = data.subsample(sizes[-1], opts.batch_size, dtype=np.float32, **kw)
    if dense is None:
        return []
    return [dense.subsample(m, opts.batch_size) for m in sizes[:-1]] + [dense]


def build_result(problem, st, x0, lb, ub, free, *, strategy, mon, coarse_passes,
                 coarse_points, batch_size, t0, messages) -> FitResult:
    """The result over all parameters from the solver state over the free ones
    (``free``); fixed parameters get zero rows and columns in covariance and JᵀJ."""
    ne = st.ne
    x = free.expand(st.x)
    dof = max(ne.n - free.n_free, 1)
    chi2r = 2.0 * ne.cost / dof
    span = np.where(np.isfinite(ub - lb), ub - lb, 1.0)
    on_bound = free.free & ((x <= lb + 1e-9 * span) | (x >= ub - 1e-9 * span))
    floor = residual_variance_floor(problem, x)
    if chi2r < floor and ne.n > 0:  # noise-free data: the residuals are rounding errors
        messages.append(f"residuals below working precision (reduced chi2 {chi2r:.1e} < "
                        f"{floor:.1e}): the standard errors are taken at that floor, the "
                        "smallest scatter the arithmetic resolves")
    if ne.n > 0 and np.all(np.isfinite(ne.H)):
        cov = free.embed_matrix(covariance_from_normal(ne.H, max(chi2r, floor)))
    else:
        cov = np.where(np.outer(free.free, free.free), np.nan, 0.0)
    undetermined = np.isinf(np.diag(cov))
    names = tuple(problem.parameter_names)
    full = [r.seconds for r in mon.passes if r.stage == "full"]
    return FitResult(
        parameter_names=names,
        parameters=x,
        uncertainties=np.sqrt(np.abs(np.diag(cov))),
        covariance=cov,
        cost=ne.cost,
        n_points=ne.n,
        reduced_chi_squared=chi2r,
        converged=st.converged,
        stop_reason=st.reason,
        strategy=strategy,
        iterations=st.iteration,
        passes=len(full),
        coarse_passes=coarse_passes,
        coarse_points=coarse_points,
        batch_size=batch_size,
        at_bounds=[n for n, b in zip(names, on_bound, strict=True) if b],
        not_moved=not_moved_from(names, x, x0, free.free),
        undetermined=[n for n, b in zip(names, undetermined, strict=True) if b],
        wall_time_s=time.perf_counter() - t0,
        pass_seconds=full,
        peak_rss_mb=peak_rss_mb(),
        device=jax.devices()[0].platform,
        normal_matrix=free.embed_matrix(ne.H),
        fixed=[n for n, f in zip(names, free.free, strict=True) if not f],
        generic_rules=getattr(problem, "generic_rules", False),
        sigma_given=getattr(problem, "sigma_given", False),
        streaming_diagnostics=mon.diagnostics(),
        recovery_actions=list(mon.recovery_actions),
        history=st.history,
        messages=messages,
        interrupted_by=signal.Signals(mon.signal_received).name
        if mon.signal_acted_on else None,
    )
