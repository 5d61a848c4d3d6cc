"""The internal-coordinate stage of a fit and its hand-over to the user's coordinates:
each power law fitted about a reference time in Box-Cox form with its amplitude's sign
held (``coordinates.py``), the quadrants of J, the logarithmic edge, a bound the internal
optimum crossed, and the finish in user coordinates. ``driver`` runs it between the coarse
levels and the result."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from homodyne.optimization.coordinates import EDGE_ALPHA, PowerLawCoordinates, SolverSpace
from homodyne.optimization.engine import (
    EngineOptions,
    first_step,
    solve_lm,
    stopped,
    trial_point,
)
from homodyne.optimization.geodesic import geodesic_pass, space_maps
from homodyne.optimization.passes import PassRunner
from homodyne.optimization.precision import evaluation_error, rounding_error
from homodyne.optimization.problems import NormalEquations
from homodyne.optimization.result import FitResult

# A held fit on its way to the logarithmic edge stops this close to its end (standard
# errors, gradient cosine): the finish in user coordinates starts from the edge point
# its sums predict (``_at_edge``) and converges at the full tolerance there
EDGE_STEP_SE = 1e-2
EDGE_GTOL = 1e-4


def _fit_internal(problem, coords, space, x, x0, lb, ub, runner, opts, track, trust,
                  full_kw, edge, messages):
    """The fit in internal coordinates with each amplitude >= 0 held from the start by a
    quadrant of (slope, alpha) (``PowerLawCoordinates.quadrant``), picked by the start or,
    at a plain start, by the solver's first step. At the end the held limits'
    multipliers (the gradient's sign on them) tell the case: the slope's binds -> J's
    trend is the other one, that quadrant is fitted and the lower cost kept; alpha's binds
    -> the bound pushes the optimum to the logarithmic edge (one Gauss-Newton step from
    there estimates where the unbounded optimum lies); neither -> the sign condition is not
    active. Fills ``edge`` (exponent index -> where the optimum lies); returns the
    space, the state and the exponents on their way to the logarithmic edge."""
    evaluate = runner.evaluate
    triples = coords.held_triples(lb)
    u = space.free.expand(x)
    ne0 = None
    sides: dict[tuple[int, int, int], int] = {}
    if triples:  # the start's pass; its first step picks the quadrant of a plain start
        ne0 = space.evaluator(evaluate)(x)
        step = space.free.expand(first_step(ne0, x, *space.bounds, opts.initial_damping))
        sides = {t: coords.start_side(u, t[0], t[1], step) for t in triples}
    def geodesic_for(sp):
        return _geodesic(opts, problem, runner, sp)

    held_space, st = _held_fit(coords, space, u, sides, x0, lb, ub, evaluate, opts, track,
                               trust, full_kw, ne0, geodesic_for)
    if triples:
        messages.append(f"internal coordinates (t_ref = {coords.t_ref:.4g} s), "
                        f"{_quadrants(problem, sides)}: {st.evaluations} passes, {st.reason}")
    else:
        messages.append(f"internal coordinates (t_ref = {coords.t_ref:.4g} s): "
                        f"{st.evaluations} full passes, {st.reason}")
    if stopped(st):
        return held_space, st, set(), None
    binds = _binding_limits(held_space, st, sides)
    # the slope's limit binds: J's trend is the other one. Alpha's binds at a converged
    # end where the start's own trend picked the quadrant (a plain start's is picked by
    # the first step): the other quadrant may hold a lower optimum than this one's
    # logarithmic edge (a start on a bound corner). Either way fit that quadrant too and
    # keep the lower cost; after alpha's, from the mirror image of the end where that
    # makes J(t_ref) positive (below), else from the start
    trend = coords.to_internal(x0)  # the user's start (a coarse level's end has a trend)
    # the model has |∫J|: -J is the same fit, and an end at the edge (|alpha| = EDGE_ALPHA)
    # with J(t_ref) < 0 mirrored is the other quadrant's corner with J(t_ref) > 0. So also
    # where a plain start's first step picked the quadrant: an end on its way to the edge
    # with J(t_ref) < 0 is fitted on in the other quadrant from its mirror image (opt14
    # seed 2039: the box point of the negative level was far from |J|, and the finish from
    # it ended at chi2 20x SciPy's, reported converged). Repeated while the kept end has
    # such a triple not yet flipped (2039: J's case shows only after the shear's flip),
    # each triple's other quadrant once
    tried: set[tuple[int, int, int]] = set()
    while True:
        u_held = held_space.free.expand(st.x)
        trend_flip = {t for t in triples if t not in tried and binds[t] == "alpha"
                      and (trend[t[0]] != 0 or u_held[t[2]] < 0)} if st.converged else set()
        if tried:  # a later round: only an edge end with J(t_ref) < 0 (a slope's limit
            # binding there is left to the crossed-bound refit below: opt14 seed 2042)
            trend_flip = {t for t in trend_flip if u_held[t[2]] < 0}
        flip = {t: -sides[t] for t in triples if t not in tried and (
            t in trend_flip or binds[t] == "slope" and not tried)}
        if not flip:
            break
        tried.update(flip)
        mirror = {t for t in trend_flip if u_held[t[2]] < 0}
        # from the start where the way to the edge drags the rest along, else from the end
        u_end = u.copy() if trend_flip - mirror else u_held.copy()
        for i, a, o in flip:
            if (i, a, o) in mirror:
                u_end[[i, a, o]] = -u_held[[i, a, o]]
            else:
                u_end[i] = 0.0
        sides2 = {**sides, **flip}
        space2, st2 = _held_fit(coords, space, u_end, sides2, x0, lb, ub, evaluate, opts,
                                track, trust, full_kw, None, geodesic_for)
        _chain(st2, st)
        messages.append(f"internal coordinates, the other quadrant (a held limit binds): "
                        f"{_quadrants(problem, sides2)}: {st2.evaluations} passes in all, "
                        f"{st2.reason}")
        if stopped(st2):
            return space2, st2, set(), None
        better = st2.converged and st2.ne.cost < st.ne.cost or not st.converged
        if mirror and st.converged and st2.converged:
            # level and slope are free: the lower internal cost may lie outside the user's
            # box. Judge the two by the cost where the finish in user coordinates starts
            costs = [_box_cost(coords, hs, s_, _binding_limits(hs, s_, sd), lb, ub, evaluate)
                     for hs, s_, sd in ((held_space, st, sides), (space2, st2, sides2))]
            st2.evaluations += sum(c[1] for c in costs)
            better = costs[1][0] < costs[0][0]
        if better:
            held_space, st, sides = space2, st2, sides2
            binds = _binding_limits(held_space, st, sides)
        else:
            _kept_after(st, st2)
    u_end = held_space.free.expand(st.x)
    x_end = coords.to_user(u_end)
    names = problem.parameter_names
    edge_start: set[int] = set()
    for i, a, o in coords.triples:
        where, located = x_end, True
        if binds.get((i, a, o)) == "alpha":
            edge_start.add(a)  # on its way to the logarithmic edge
            where, located = _locate_unbounded(coords, u_end, st.ne, (i, a, o), sides, x0,
                                               lb, ub, st.lam), False
        inside = all(lb[k] <= where[k] <= ub[k] for k in (i, a, o))
        point = (f"{names[i]} = {where[i]:.4g}, {names[a]} = {where[a]:.4g}, "
                 f"{names[o]} = {where[o]:.4g}")
        if not st.converged:  # the held fit stopped short: no case can be told
            edge[a] = f"unknown: the internal fit stopped short ({st.reason})"
            continue
        edge[a] = "interior" if inside and a not in edge_start else (
            f"the unbounded optimum ({point}) is outside the bounds" if located else
            f"{names[i]} >= {lb[i]:g} binds: without it the fit heads to ({point}; one "
            "Gauss-Newton step from the held optimum, an estimate)")
    crossed = _crossed_bounds(coords, x_end, lb, ub, {t for t, b in binds.items()
                                                      if b == "alpha"}) if st.converged else set()
    _, hold, mirrored = _crossed_hold(coords, x_end, crossed, lb, ub)
    if not hold:
        return held_space, st, edge_start, None

    def track_user(hs, s_):  # the snapshot as the stage's own space has it
        track(dataclasses.replace(s_, x=space.free.reduce(coords.to_internal(hs.user(s_.x)))))

    def refit_from(st_done):
        return _fit_on_crossed_bounds(problem, coords, x_end, st_done, sides, crossed, x0,
                                      lb, ub, evaluate, opts, track_user, trust, full_kw,
                                      geodesic_for, messages)

    if mirrored:  # the box point of J(t_ref) < 0 is not that of |J|: refit at once
        return (*refit_from(st), edge_start, None)
    # else only where the finish from the box point ends off these bounds
    return held_space, st, edge_start, (hold, refit_from)


def _internal_then_user(problem, coords, space, x, x0, lb, ub, free, flb, fub, runner,
                        opts, track, trust, full_kw, edge, messages, to_user,
                        signalled=lambda: False):
    """The internal-coordinate fit from ``space``'s vector ``x`` (user start ``x0``) and its
    finish in user coordinates: the box point, the predicted edge point, the refit on a
    crossed bound. ``to_user(x)`` is called with the user vector the finish starts from
    (the caller's space changes there). Returns (None, the state over the user's free
    parameters), or (that stage's space, its state) where it stopped (a stop of its own
    or a signal: ``signalled()``)."""
    space, st, edge_start, refit = _fit_internal(
        problem, coords, space, x, x0, lb, ub, runner, opts, track, trust, full_kw, edge,
        messages)
    if stopped(st) or signalled():
        return space, st
    toward = _at_edge(coords, space, st, lb, ub, edge_start) if edge_start else None
    internal = space.state_in_user(st, free)
    to_user(internal.x)
    st = _finish_in_user_coordinates(internal, free, runner, flb, fub, opts, track, trust,
                                     full_kw, messages, coords, lb, ub, edge_start, toward)
    if toward is not None and not st.converged and not signalled() and not stopped(st):
        st = _finish_again_from_the_box(st, internal, free, runner, flb, fub, opts, track,
                                        trust, full_kw, messages, coords, lb, ub, edge_start)
    if refit is not None and st.converged and not signalled() \
            and not _ends_on(free.expand(st.x), refit[0]):
        st = _refit_and_finish(refit[1], st, free, runner, flb, fub, opts, track, trust,
                               full_kw, messages, coords, lb, ub, edge_start)
    return None, st


def _crossed_bounds(coords, x, lb, ub, toward_edge) -> set[tuple[int, int, int]]:
    """The power laws (not those on their way to the logarithmic edge) whose amplitude or
    offset the internal optimum ``x`` puts outside the user's box."""
    return {t for t in coords.triples if t not in toward_edge
            and any(not lb[k] <= x[k] <= ub[k] for k in (t[0], t[2]))}


def _crossed_hold(coords, x, crossed, lb,
                  ub) -> tuple[np.ndarray, dict[int, float], bool]:
    """The box point of the user-coordinate ``x`` (each power law in ``crossed`` with
    J(t_ref) < 0 mirrored first: -J is the same fit, the model has |∫J|), the crossed
    amplitudes and offsets ``into_box`` put on a bound there (index -> bound), and
    whether any power law was mirrored."""
    x = np.array(x, np.float64)
    mirrored = False
    for i, _a, o in crossed:
        if coords.to_internal(x)[o] < 0:
            x[[i, o]] = -x[[i, o]]
            mirrored = True
    xb = coords.into_box(x, lb, ub)
    return xb, {k: float(xb[k]) for i, _a, o in crossed for k in (i, o)
                if not lb[k] <= x[k] <= ub[k] and xb[k] in (lb[k], ub[k])}, mirrored


def _ends_on(x, hold) -> bool:
    """Every crossed amplitude/offset of ``x`` on the bound ``hold`` names. A finish that
    converged elsewhere may be a worse minimum (opt14 F6); one that did not converge is
    left as it is (v3 seed 2038: at SciPy's cost, a refit from there took 213 passes)."""
    return all(x[k] == b for k, b in hold.items())


def _better_end(st, st2):
    """Of a finish ``st`` and the one ``st2`` tried after it (whose counts and history
    include st's), the better end: converged first, then the lower cost; the counts and
    the history are st2's."""
    if (st2.converged, -st2.ne.cost) > (st.converged, -st.ne.cost):
        return st2
    return _kept_after(st, st2)


def _kept_after(st, st2):
    """``st`` kept after ``st2`` was tried from it: its counts and its history are st2's,
    which include st's (every pass and iteration the fit made, the discarded try's too),
    so the history covers the iterations counted; its point and its reason stay st's."""
    st.evaluations, st.iteration, st.history = st2.evaluations, st2.iteration, st2.history
    return st


def _finish_again_from_the_box(st, internal, free, runner, flb, fub, opts, track, trust,
                               full_kw, messages, coords, lb, ub, edge_start):
    """The finish from the predicted edge point (``_at_edge``, an extrapolation) did not
    converge: finish again from the plain box point of the held end, keep the better end
    (converged first, then the lower cost). Counts include both."""
    spent = dataclasses.replace(internal, evaluations=st.evaluations, iteration=st.iteration,
                                history=st.history)
    st2 = _finish_in_user_coordinates(spent, free, runner, flb, fub, opts, track, trust,
                                      full_kw, messages, coords, lb, ub, edge_start)
    return _better_end(st, st2)


def _refit_and_finish(refit_from, st, free, runner, flb, fub, opts, track, trust, full_kw,
                      messages, coords, lb, ub, edge_start):
    """The finish from the box point converged off the bounds the internal optimum
    crossed: refit on them (``_fit_on_crossed_bounds``), finish again
    from there, keep the better end (converged first, then the lower cost). Counts
    include both."""
    space, st_r = refit_from(st)
    if stopped(st_r):
        return st_r
    st2 = _finish_in_user_coordinates(space.state_in_user(st_r, free), free, runner, flb, fub,
                                      opts, track, trust, full_kw, messages, coords, lb, ub,
                                      edge_start)
    return _better_end(st, st2)


def _fit_on_crossed_bounds(problem, coords, x, st, sides, crossed, x0, lb, ub,
                           evaluate, opts, track, trust, full_kw, geodesic_for, messages):
    """The internal optimum ``x`` (user coordinates) lies outside the user's box with
    J(t_ref) < 0, or the finish from its box point ended elsewhere: refit with the crossed
    amplitude or offset held on the bound it crossed (its power law in user coordinates,
    the others still internal in their quadrants), from the box point with the same
    J(t_ref) and slope (``_crossed_hold``); repeated while the end crosses another bound.
    The finish in user coordinates then starts from a constrained optimum, not from a box
    point far from it. ``st``: the state whose counts this continues. Returns a
    user-coordinate space and the state over its free parameters."""
    user_free = SolverSpace(None, x0, lb, ub).free
    names = problem.parameter_names
    hold: dict[int, float] = {}
    for _ in range(3):
        xb, more, _ = _crossed_hold(coords, x, crossed, lb, ub)
        hold.update(more)
        x = xb
        hlb, hub = np.array(lb, np.float64), np.array(ub, np.float64)
        for k, bound in hold.items():
            hlb[k] = hub[k] = bound
        sub = PowerLawCoordinates.for_problem(problem, hlb, hub)
        keep = {t: s for t, s in sides.items() if sub is not None and t in sub.triples}

        def kw(hs):  # the precision limits and the snapshot on this space's vectors
            return dict(full_kw, eval_error=lambda v: evaluation_error(problem, hs.user(v)),
                        rounding_error=lambda v: rounding_error(problem, hs.user(v)),
                        on_iteration=lambda s_: track(hs, s_))

        if sub is None:
            hs = SolverSpace(None, x, hlb, hub)
            st2 = solve_lm(hs.evaluator(evaluate), hs.start, *hs.bounds,
                           initial_damping=opts.initial_damping, gn_trust_se=trust,
                           geodesic=geodesic_for(hs), **kw(hs))
        else:
            hs, st2 = _held_fit(sub, None, sub.to_internal(x), keep, x, hlb, hub, evaluate,
                                opts, None, trust, kw, None, geodesic_for)
        _chain(st2, st)
        st = st2
        messages.append("the internal optimum crossed a bound: refit with "
                        + ", ".join(f"{names[k]} = {b:g}" for k, b in hold.items())
                        + f" held: {st.evaluations} passes in all, {st.reason}")
        x = hs.user(st.x)
        if stopped(st):
            end = _unevaluated(user_free.reduce(np.clip(x, lb, ub)), st.reason)
            end.evaluations, end.iteration = st.evaluations, st.iteration
            return SolverSpace(None, x0, lb, ub), end
        crossed = _crossed_bounds(coords, x, lb, ub, ())
        if not crossed or not st.converged:
            break
    # the finish starts here with every parameter free: its first pass, reused
    st.x = user_free.reduce(np.clip(x, lb, ub))
    st.ne = user_free.evaluator(evaluate)(st.x)
    st.evaluations += 1
    return SolverSpace(None, x0, lb, ub), st


def _held_fit(coords, space, u, sides, x0, lb, ub, evaluate, opts, track, trust, full_kw,
              ne0, geodesic_for=None):
    """One internal fit from internal ``u`` with the quadrants ``sides`` held; ``ne0``:
    the normal equations at ``space``'s vector of u (reused where u needs no move);
    ``geodesic_for(space)``: the opt-in geodesic pass on that space."""
    held: dict[int, tuple[float, float]] = {}
    for (i, a, _), side in sides.items():
        held.update(coords.quadrant(i, a, side, lb, ub) or coords.quadrant(i, a, -side, lb, ub))
    u0 = coords.into_quadrant(u, held, {a for _, a, _ in sides})
    hs = SolverSpace(coords, x0, lb, ub, held=held, u0=u0)
    reuse = ne0 is not None and np.array_equal(u0, u)
    # the quadrant's own limits are left to the quadrant logic (_binding_limits): a plain
    # start's slope starts on 0, and a first step off it cost a measured window 5 passes
    quadrant = np.zeros(u0.size, bool)
    quadrant[list(held)] = True
    kw = dict(on_iteration=track, release=hs.free.reduce(quadrant) == 0)
    kw.update(full_kw(hs) if callable(full_kw) else full_kw)  # keywords for this space
    st = solve_lm(hs.evaluator(evaluate), hs.start, *hs.bounds,
                  initial_damping=opts.initial_damping,
                  gn_trust_se=trust, ne0=ne0 if reuse else None,
                  good_enough=_edge_bound(hs, sides),
                  geodesic=geodesic_for(hs) if geodesic_for else None, **kw)
    st.evaluations += ne0 is not None and reuse
    return hs, st


def _edge_bound(hs, sides):
    """The held fit's early stop: every held exponent on its limit +-EDGE_ALPHA with its
    gradient pointing out (on its way to the logarithmic edge, where the finish in user
    coordinates starts from the edge point those sums predict) and the fit within
    EDGE_STEP_SE standard errors and gradient cosine EDGE_GTOL of that end."""
    def good_enough(st):
        if not sides or st.step_se > EDGE_STEP_SE or st.grad_cos > EDGE_GTOL:
            return None
        u = hs.free.expand(st.x)
        g = hs.free.expand(st.ne.g)
        lo, hi = (hs.free.expand(b) for b in hs.bounds)
        for (_, a, _), side in sides.items():
            limit = lo[a] if side > 0 else hi[a]
            if not (u[a] == limit and abs(limit) == EDGE_ALPHA and g[a] * side < 0):
                return None
        return (f"on the way to the logarithmic edge: Gauss-Newton step {st.step_se:.2e} "
                f"standard errors <= {EDGE_STEP_SE:g}, gradient cosine {st.grad_cos:.2e} <= "
                f"{EDGE_GTOL:g} (the finish in user coordinates follows)")
    return good_enough


def _box_cost(coords, hs, st, binds, lb, ub, evaluate) -> tuple[float, int]:
    """(cost, passes spent) at the point of the user's box where the finish in user
    coordinates would start from this internal end (``into_box``); its own cost, no pass,
    where the end is inside the box."""
    x = coords.to_user(hs.free.expand(st.x))
    if np.all(x >= lb) and np.all(x <= ub):
        return float(st.ne.cost), 0
    edge = {a for (_, a, _), b in binds.items() if b == "alpha"}
    return float(evaluate(coords.into_box(x, lb, ub, edge)).cost), 1


def _binding_limits(hs, st, sides) -> dict[tuple[int, int, int], str | None]:
    """Per held triple, the sign limit its gradient pushes against at the end (the KKT
    multiplier's sign): "slope" (held at 0), "alpha" (held at +-EDGE_ALPHA) or None."""
    u = hs.free.expand(st.x)
    g = hs.free.expand(st.ne.g)  # descent direction: J^T r
    lo, hi = (hs.free.expand(b) for b in hs.bounds)
    out: dict[tuple[int, int, int], str | None] = {}
    for (i, a, o), side in sides.items():
        limit = lo[a] if side > 0 else hi[a]
        if u[i] == 0.0 and g[i] * side < 0:
            out[(i, a, o)] = "slope"
        elif u[a] == limit and abs(limit) == EDGE_ALPHA and g[a] * side < 0:
            out[(i, a, o)] = "alpha"
        else:
            out[(i, a, o)] = None
    return out


def _locate_unbounded(coords, u, ne, triple, sides, x0, lb, ub, lam: float):
    """Where the optimum lies without the amplitude's sign limit, for the report only and
    at no pass: one Gauss-Newton step (damped as the held fit ended) from the held
    optimum on its own normal equations, with that limit released. Returns that point
    (user coordinates)."""
    others = {t: s for t, s in sides.items() if t != triple}
    held: dict[int, tuple[float, float]] = {}
    for (i, a, _), side in others.items():
        held.update(coords.quadrant(i, a, side, lb, ub))
    ls = SolverSpace(coords, x0, lb, ub, held=held, u0=u)
    return ls.user(trial_point(ne, ls.start, *ls.bounds, lam))


def _chain(st2, st) -> None:
    """st2 continues st: its counts and history include st's."""
    st2.evaluations += st.evaluations
    st2.iteration += st.iteration
    st2.history = st.history + st2.history


def _quadrants(problem, sides) -> str:
    names = problem.parameter_names
    return ", ".join(f"{names[i]} >= 0 held with J {'increasing' if s > 0 else 'decreasing'}"
                     for (i, _, _), s in sides.items())


def _at_edge(coords, hs, st, lb, ub, edge_start) -> np.ndarray:
    """Where the finish in user coordinates starts after a held fit that ended on its way
    to the logarithmic edge, at no pass: each exponent in ``edge_start`` moved from its
    held limit (+-EDGE_ALPHA) to its value at the box point (``into_box``), and the
    other free parameters re-solved for it on the held optimum's own normal equations
    (one Gauss-Newton step with those exponents fixed). Returns the full user vector.
    The held optimum itself is 1e-3 of an exponent away: its J differs there by
    slope * 1e-3 * ln^2 s / 2, which the alpha column of those sums carries to first order."""
    u = hs.free.expand(st.x)
    u_box = coords.to_internal(coords.into_box(coords.to_user(u), lb, ub, edge_start))
    idx = np.flatnonzero(hs.free.free)  # full index of each solver entry
    lo, hi = hs.bounds
    moved = np.isin(idx, list(edge_start))
    rest = ~moved & (st.x > lo) & (st.x < hi)  # a parameter on a limit stays there
    step = np.zeros(idx.size)
    step[moved] = (u_box - u)[idx[moved]]
    if rest.any():
        H, g = st.ne.H, st.ne.g
        rhs = g[rest] - H[np.ix_(rest, moved)] @ step[moved]
        d = np.sqrt(np.maximum(np.diag(H)[rest], 1e-300))  # Marquardt-scaled solve
        step[rest] = np.linalg.lstsq(H[np.ix_(rest, rest)] / np.outer(d, d), rhs / d,
                                     rcond=1e-14)[0] / d
    # the re-solve is a linear prediction: kept in the held box, and where it still maps to
    # no finite user point, the held end itself (opt14 seed 2008: the shear's slope held at
    # 0 left its exponent without influence; its predicted -2.6e134 gave gamma_dot_t0 = NaN
    # and the finish failed on "non-finite cost at the initial parameters")
    x = coords.to_user(hs.free.expand(np.clip(st.x + step, lo, hi)))
    return x if np.all(np.isfinite(x)) else coords.to_user(u)


def _mirror_negative_levels(coords, x, lb, ub) -> np.ndarray:
    """x with each power law that lies outside the box with J(t_ref) < 0 mirrored (-J: the
    same fit, the model has |∫J|): the box point of a negative level is not that of |J|
    (lam14b seed 2017: an internal fit stopped at the iteration cap with the shear's level
    < 0; its box point cost 17.1 against 0.156 there, the finish ended 'converged' at 0.49,
    SciPy 0.148). A converged end's crossed bounds are mirrored by ``_crossed_hold``."""
    x = np.array(x, np.float64)
    u = coords.to_internal(x)
    for i, _a, o in coords.triples:
        if u[o] < 0 and not all(lb[k] <= x[k] <= ub[k] for k in (i, o)):
            x[[i, o]] = -x[[i, o]]
    return x


def _finish_in_user_coordinates(internal, free, runner, flb, fub, opts, track, trust,
                                full_kw, messages, coords, lb, ub, edge_start, toward=None):
    """The user-coordinate end of a fit that ran in internal coordinates: no pass where
    the internal optimum is inside the user's box and passes the convergence test
    there too; from the nearest point of the box where it crossed a bound (an amplitude
    moved onto its bound at the same level and slope, ``into_box``; held there by the
    active set while its gradient points out)."""
    inside = bool(np.all(internal.x >= flb) and np.all(internal.x <= fub))
    x_end = free.expand(internal.x) if toward is None else toward
    x_end = _mirror_negative_levels(coords, x_end, lb, ub)
    start = np.clip(free.reduce(coords.into_box(x_end, lb, ub, edge_start)), flb, fub)
    inside = inside and not edge_start
    st = solve_lm(free.evaluator(runner.evaluate), start, flb, fub,
                  initial_damping=opts.initial_damping, on_iteration=track,
                  gn_trust_se=trust, ne0=internal.ne if inside else None,
                  geodesic=_geodesic(opts, runner.problem, runner, free), **full_kw)
    st.evaluations += internal.evaluations
    st.iteration += internal.iteration
    st.history = internal.history + st.history
    messages.append(f"user coordinates: {st.evaluations - internal.evaluations} passes, "
                    f"{st.reason}"
                    + ("" if inside else " (from the box: the internal optimum crossed a bound)"))
    return st


def _report_edges(result: FitResult, coords, edge: dict[int, str]) -> FitResult:
    """Where each power law's optimum lies; at the logarithmic edge the amplitude and the
    offset are not determined one by one (only their J(t) is): infinite uncertainty."""
    if coords is None or not edge:
        return result
    names = result.parameter_names
    for i, a, o in coords.triples:
        where = edge[a]
        if coords.at_log_edge(result.parameters[a]):
            # the reported point may lie far along the edge from the internal fit's end:
            # the amplitude and the offset part with J(t) unchanged, up to a bound; the
            # bound the internal fit held is the reported point's only where it lies on it
            stops = [f"{names[k]} = {result.parameters[k]:.6g}" for k in (i, o)
                     if names[k] in result.at_bounds]
            curve = "J(t)" if names[a] == "alpha" else "the shear rate"
            pushed = (f" (the internal-coordinate fit: {where}); the reported point lies "
                      f"along the edge, where {names[i]} and {names[o]} part with {curve} "
                      "unchanged, " + (f"on the bound {' and '.join(stops)}" if stops else
                                       "inside the bounds"))
            where = "logarithmic edge" + ("" if where == "interior" else
                                          f" (whether the bounds push it there is {where})"
                                          if where.startswith("unknown") else
                                          ", pushed there by the bounds" + pushed)
        elif where.startswith("unknown"):
            pass
        elif where == "interior" and any(names[k] in result.at_bounds for k in (i, a, o)):
            # the label must agree with the "(at bound)" flags of the same summary
            held = ", ".join(names[k] for k in (i, a, o) if names[k] in result.at_bounds)
            where = (f"on the bounds: {held} (the internal-coordinate optimum lay inside "
                     "them; the finish in user coordinates ended on the bound)")
        elif where != "interior" and not any(names[k] in result.at_bounds for k in (i, a, o)):
            # the label belongs to the parameters reported: the internal-coordinate optimum
            # lay outside the bounds, the finish in user coordinates ended inside them
            where = (f"interior (the internal-coordinate fit: {where}; the finish in user "
                     "coordinates ended inside the bounds)")
        elif where != "interior":
            where = "on the bounds: " + where
        result.power_law_optimum[names[a]] = where
        if where.startswith("logarithmic edge"):
            for k in (i, o):
                result.uncertainties[k] = np.inf
                result.covariance[k, :] = result.covariance[:, k] = np.nan
                result.covariance[k, k] = np.inf
                if names[k] not in result.undetermined:
                    result.undetermined.append(names[k])
    return result


def _geodesic(opts: EngineOptions, problem, runner: PassRunner, space):
    """Geodesic acceleration's directional pass over ``runner``'s data for a solver on
    ``space`` (geodesic.py), or None where it is off (the default)."""
    if not opts.geodesic_acceleration:
        return None
    user, jacobian = space_maps(space)
    return geodesic_pass(lambda p: PassRunner(p, runner.data, stage=runner.stage,
                                              monitor=runner.monitor), problem, user, jacobian)


def _unevaluated(x, reason):
    from homodyne.optimization.engine import LMState

    p = x.size
    ne = NormalEquations(math.nan, np.zeros((p, p)), np.zeros(p), 0)
    return LMState(x=x.copy(), ne=ne, lam=math.nan, reason=reason)
