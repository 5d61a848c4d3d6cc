"""Saddles on a bound: a stop where a parameter on its bound leaves another without influence.

With D0 = 0 the exponent alpha has no influence on the model (likewise beta at
gamma_dot_t0 = 0), so the gradient of D0 at alpha's current value can point out of the
box although at another alpha it points in: the point passes every first-order test
and is still no minimum. At a converged point this module looks for such a pair: a
parameter without influence (its conditional standard error exceeds its whole range)
and a parameter held on its bound. It scans the former over its range (the cost does
not change there) and returns the point where the held one's gradient points furthest
into the box, so that the solver releases it and continues downhill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from homodyne.optimization.problems import NormalEquations

# saddles one solve steps off at most (each escape lowers the cost, so this only
# bounds the work on a cost surface full of them)
MAX_ESCAPES = 3
# values scanned across the range of a parameter without influence
SCAN_POINTS = 9
# the scan gives an infinite range this many steps of max(|x|, 1) either side
UNBOUNDED_STEPS = (1.0, 2.0, 4.0, 8.0)


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


def scan_values(xj: float, lo: float, hi: float) -> np.ndarray:
    """The values tried for one parameter without influence, its current one excluded."""
    if np.isfinite(lo) and np.isfinite(hi):
        values = np.linspace(lo, hi, SCAN_POINTS)
    else:
        step = max(abs(xj), 1.0)
        values = np.array([xj + s * k * step for k in UNBOUNDED_STEPS for s in (-1.0, 1.0)])
        values = np.clip(values, lo, hi)
    return values[np.abs(values - xj) > 1e-12 * max(abs(xj), 1.0)]


def _release_gain(ne: NormalEquations, x, lb, ub, held) -> float:
    """The largest decrease a step of one held parameter alone into the box predicts
    (g_i² / 2 H_ii where its gradient points into the box, else 0)."""
    g, hii = ne.g, np.diag(ne.H)
    into = held & (((x <= lb) & (g > 0)) | ((x >= ub) & (g < 0))) & (hii > 0)
    if not into.any():
        return 0.0
    return float(np.max(np.where(into, g**2 / (2.0 * np.where(hii > 0, hii, 1.0)), 0.0)))


def escape_saddle(evaluate: Callable[[np.ndarray], NormalEquations], ne: NormalEquations,
                  x, lb, ub, held) -> SaddleEscape | None:
    """A point to continue from if ``x`` (converged, ``held`` = parameters pinned on a
    bound by a gradient pointing out) is a saddle on a bound; None if it is not. Costs
    one pass per value scanned, and nothing where no parameter is held on a bound."""
    if not held.any():
        return None
    idle = without_influence(ne, x, lb, ub, held)
    best, evaluations = None, 0
    for j in idle:
        for v in scan_values(float(x[j]), float(lb[j]), float(ub[j])):
            x_try = x.copy()
            x_try[j] = v
            ne_try = evaluate(x_try)
            evaluations += 1
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
