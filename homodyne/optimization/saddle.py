"""Saddles on a bound: a stop where a parameter on its bound leaves another without influence.

With D0 = 0 the exponent alpha has no influence on the model (likewise beta at
gamma_dot_t0 = 0), so the gradient of D0 at alpha's current value can point out of the
box although at another alpha it points in: the point passes every first-order test
and is still no minimum. At a converged point this module looks for such a pair: a
parameter without influence (its conditional standard error exceeds its whole range)
and a parameter held on its bound. Two close probes of the former (the cost does not
change with it) tell where the held one's gradient turns into the box; the solver
continues from there, which releases it, and goes downhill.

A stationary point off the bounds can be a saddle too: at zero shear (sinc is even)
every shear derivative vanishes, so the fit stops there although the data have shear.
Where parameters have no influence and the bound case finds nothing, each of those is
probed with steps shrinking from the bound-case probe until one lowers the cost by more
than the noise (or the cost no longer changes), and once the other way; the solver
continues from the lowest probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from homodyne.optimization.problems import NormalEquations

# saddles one solve steps off at most (each escape lowers the cost, so this only
# bounds the work on a cost surface full of them)
MAX_ESCAPES = 3
# the probes either side of a parameter without influence: this fraction of its range
# (of max(|x|, 1) where the range is infinite); small, so the model stays finite there
PROBE_FRACTION = 1.0 / 64.0
# the trial goes this many times the distance at which the held gradient is predicted to
# change sign (linear in the parameter without influence), so that it points in clearly
OVERSHOOT = 2.0
# interior probes: each shrinks the last by at least this factor, at most this many times;
# a probe counts where it lowers chi2 by more than one noise unit (cost by chi2_red / 2),
# and the shrinking stops where the cost changes by less than NEGLIGIBLE noise units
PROBE_SHRINK = 8.0
MAX_SHRINKS = 8
NEGLIGIBLE = 0.01


@dataclass(frozen=True)
class SaddleEscape:
    """Where to continue from a saddle: the point, its normal equations, what it cost."""

    x: np.ndarray
    ne: NormalEquations
    evaluations: int
    description: str


def without_influence(ne: NormalEquations, x, lb, ub, held) -> np.ndarray:
    """Indices of the parameters the data do not determine within their range: even the
    conditional standard error sqrt(chi2_red / H_jj) exceeds the range (an exactly
    vanishing Jacobian column always qualifies). ``held`` ones (on a bound) are left out."""
    dof = max(ne.n - x.size, 1)
    chi2r = 2.0 * ne.cost / dof
    span = ub - lb
    hjj = np.diag(ne.H)
    with np.errstate(invalid="ignore", over="ignore"):
        none = (hjj <= 0) | (np.isfinite(span) & (hjj * span**2 <= chi2r))
    return np.flatnonzero(none & ~held)


def probe_step(xj: float, lo: float, hi: float) -> float:
    """The probe distance for one parameter without influence."""
    span = hi - lo
    return PROBE_FRACTION * (span if np.isfinite(span) else max(abs(xj), 1.0))


def _release_gain(ne: NormalEquations, x, lb, ub, held) -> float:
    """The largest decrease a step of one held parameter alone into the box predicts
    (g_i² / 2 H_ii where its gradient points into the box, else 0)."""
    g, hii = ne.g, np.diag(ne.H)
    into = held & (((x <= lb) & (g > 0)) | ((x >= ub) & (g < 0))) & (hii > 0)
    if not into.any():
        return 0.0
    return float(np.max(np.where(into, g**2 / (2.0 * np.where(hii > 0, hii, 1.0)), 0.0)))


def _held_gradients(ne: NormalEquations, x, lb, ub, held) -> np.ndarray:
    """The gradient of each held parameter, signed so that > 0 points into the box."""
    return np.where(x <= lb, ne.g, -ne.g)[held]


def escape_saddle(evaluate: Callable[[np.ndarray], NormalEquations], ne: NormalEquations,
                  x, lb, ub, held) -> SaddleEscape | None:
    """A point to continue from if ``x`` (converged, ``held`` = parameters pinned on a
    bound by a gradient pointing out) is a saddle on a bound; None if it is not.

    For each parameter without influence two close probes give how the held gradients
    change with it; where one is predicted to turn into the box, one trial point a little
    beyond is evaluated. Three passes per parameter without influence, none where no
    parameter is held on a bound; probes stay close, so the model stays finite."""
    if not held.any():
        return None
    best, evaluations = None, 0
    g0 = _held_gradients(ne, x, lb, ub, held)
    for j in without_influence(ne, x, lb, ub, held):
        h = probe_step(float(x[j]), float(lb[j]), float(ub[j]))
        sides = [(s, np.clip(x[j] + s * h, lb[j], ub[j])) for s in (-1.0, 1.0)]
        trials = []
        slopes = []
        for _, v in sides:
            x_try = x.copy()
            x_try[j] = v
            ne_try = evaluate(x_try)
            evaluations += 1
            trials.append((x_try, ne_try))
            if np.isfinite(ne_try.cost) and v != x[j]:
                slopes.append((_held_gradients(ne_try, x_try, lb, ub, held) - g0) / (v - x[j]))
        if slopes:
            slope = np.mean(slopes, axis=0)
            with np.errstate(divide="ignore", invalid="ignore"):
                root = np.where(slope != 0, -g0 / slope, np.inf)  # where each turns in
            for r in root[np.isfinite(root)]:
                x_try = x.copy()
                x_try[j] = np.clip(x[j] + OVERSHOOT * r, lb[j], ub[j])
                if x_try[j] != x[j]:
                    trials.append((x_try, evaluate(x_try)))
                    evaluations += 1
        for x_try, ne_try in trials:
            if not np.isfinite(ne_try.cost):
                continue
            score = _release_gain(ne_try, x_try, lb, ub, held) - (ne_try.cost - ne.cost)
            if score > 0 and (best is None or score > best[0]):
                best = (score, j, x_try, ne_try)
    if best is None:
        return None
    _, j, x_new, ne_new = best
    on_bound = ", ".join(str(i) for i in np.flatnonzero(held))
    return SaddleEscape(x_new, ne_new, evaluations,
                        f"stepped off a saddle on a bound: parameter {j} (without influence) "
                        f"moved {x[j]:.6g} -> {x_new[j]:.6g}, releasing parameter(s) "
                        f"{on_bound} held on a bound")


def _probe(evaluate, x, j, v, c0, unit, found) -> float:
    """One probe with x_j = v (an evaluation): appended to ``found`` where it lowers the
    cost by more than ``unit``; returns the cost change in units (inf where not finite)."""
    x_try = x.copy()
    x_try[j] = v
    ne_try = evaluate(x_try)
    change = (ne_try.cost - c0) / unit if np.isfinite(ne_try.cost) else np.inf
    if change < -1.0:
        found.append((ne_try.cost, x_try, ne_try))
    return change


def _probe_shrinking(evaluate, x, j, h, lo, hi, c0, unit) -> tuple[list, int, tuple]:
    """Probes x_j + h with h shrinking (within [lo, hi]): the probes that lower the cost
    by more than ``unit`` as [(cost, x, ne)], the evaluations spent and the lowest probe's
    (change in units, step). A rise of C units shrinks the step by max(PROBE_SHRINK,
    C^(1/4)): at a stationary point the cost changes at least quadratically, and a step
    whose quartic rise is one unit lands in a dip where one deeper than a unit exists. Stops at the
    first probe that lowers the cost (after one step beyond it, sqrt(PROBE_SHRINK) times
    as far), or where a probe changes the cost by less than NEGLIGIBLE units."""
    found: list = []
    evaluations, lowest = 0, (np.inf, h)
    for _ in range(MAX_SHRINKS + 1):
        v = float(np.clip(x[j] + h, lo, hi))
        if v == x[j]:
            break
        change = _probe(evaluate, x, j, v, c0, unit, found)
        evaluations += 1
        lowest = min(lowest, (change, v - x[j]))
        if found:
            far = float(np.clip(x[j] + h * np.sqrt(PROBE_SHRINK), lo, hi))
            lowest = min(lowest, (_probe(evaluate, x, j, far, c0, unit, found), far - x[j]))
            evaluations += 1
            break
        if abs(change) < NEGLIGIBLE:
            break
        h /= max(PROBE_SHRINK, change**0.25) if change > 0 else PROBE_SHRINK
    return found, evaluations, lowest


def escape_stationary(evaluate: Callable[[np.ndarray], NormalEquations], ne: NormalEquations,
                      x, lb, ub, held) -> SaddleEscape | None:
    """A point to continue from if ``x`` (converged) is a stationary point that is no
    minimum along a parameter without influence (zero first derivative, the cost lower a
    small step away: zero shear with shear in the data); None if no probe finds lower.

    Runs only where some parameter has no influence: each is probed with shrinking steps
    on one side (``_probe_shrinking``; the positive one where the bounds allow), then once
    on the other at the lowest probe's distance where that one changed the cost at all
    (the change is quadratic, even, to leading order at a stationary point). An ordinary
    fit spends nothing here."""
    candidates = without_influence(ne, x, lb, ub, held)
    if candidates.size == 0 or not np.isfinite(ne.cost):
        return None
    unit = max(ne.cost / max(ne.n - x.size, 1), 1e-300)  # chi2_red / 2: one noise unit of chi2
    found: list = []
    evaluations = 0
    for j in candidates:
        h = probe_step(float(x[j]), float(lb[j]), float(ub[j]))
        sign = 1.0 if x[j] + h <= ub[j] or x[j] - h < lb[j] else -1.0
        side, spent, (change, step) = _probe_shrinking(evaluate, x, j, sign * h, lb[j],
                                                       ub[j], ne.cost, unit)
        evaluations += spent
        mirror = float(np.clip(x[j] - step, lb[j], ub[j]))
        if abs(change) >= NEGLIGIBLE and mirror != x[j] and \
                np.sign(mirror - x[j]) != np.sign(step):
            _probe(evaluate, x, j, mirror, ne.cost, unit, side)
            evaluations += 1
        found += [(cost, j, x_try, ne_try) for cost, x_try, ne_try in side]
    if not found:
        return None
    cost, j, x_new, _ = best = min(found, key=lambda f: f[0])  # a tie: the first found
    return SaddleEscape(x_new, best[3], evaluations,
                        f"stepped off a stationary point that is no minimum: parameter {j} "
                        f"(without influence) moved {x[j]:.6g} -> {x_new[j]:.6g}, chi2 lower "
                        f"by {(ne.cost - cost) / unit:.3g} noise units")
