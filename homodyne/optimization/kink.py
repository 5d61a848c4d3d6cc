"""Minima at a kink of the cost: where the Gauss–Newton convergence test cannot pass.

The two-time model uses |C_J[j] - C_J[i]| (physics.md I_J): where J(t) changes sign
inside the data window, C_J is not monotone and the cost is not differentiable where a
pair's integral difference crosses 0. A minimum can lie on that set (the cost rises
both ways across it, a V). There the gradient is the one of one side only, the
Gauss–Newton step points across the kink, no damped step lowers the cost, and the step
test (``step_tol_se``) never passes: the loop stalls with its damping climbing.

A stalled fit is tested as a non-smooth minimum (Clarke stationarity, as a bundle
method stops): a pass a small fraction along the Gauss–Newton step gives the gradient
beyond the kink; where the cost rose there although the model predicted a fall (it is
not differentiable between), the smallest convex combination of the gradients so far
(in the metric of JᵀJ) is the gradient of the best step that respects every kink met;
the next probe goes along that step. The point is a minimum where that step promises
less than KINK_CHI2 units of chi2, i.e. insignificant against the noise. Where the
steps keep promising more it is not: a valley crawl (a smooth cost, steps of several
standard errors) stays NOT converged. Where a probe along a combined step (after a kink
was met) lowers the cost, that step still descends along the kink although the damped
steps did not: the solver goes on along it. A first probe that lowers the cost met no
kink: that stall stays as the loop left it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from homodyne.optimization.precision import cost_resolution
from homodyne.optimization.problems import NormalEquations

# the step of the combined gradient may promise at most this many units of chi2 (its
# squared length in standard errors: 0.1 standard errors)
KINK_CHI2 = 1e-2
# each probe goes this fraction of the step it tests (at most half way to the box: a
# probe cut by a bound would not be along the step)
PROBE_FRACTION = 1e-3
# probes at most (each one pass; each may meet one more kink)
MAX_PROBES = 4


@dataclass(frozen=True)
class KinkVerdict:
    """Why a stalled point is a minimum at a kink ("" where it is not shown to be one),
    and the passes its probes took. Where a probe along a combined step lowered the cost
    instead, the step it probed (``descent``, along the kink, missed by the damped steps),
    and the probe's point and normal equations (``lower``)."""

    description: str
    evaluations: int
    descent: np.ndarray | None = None
    lower: tuple[np.ndarray, NormalEquations] | None = None


def chi2_gain(ne: NormalEquations, g: np.ndarray, step: np.ndarray, n_params: int) -> float:
    """The decrease of chi2 = Σr²/σ² (σ² = 2 cost / (n - p)) that the Gauss–Newton step
    ``step`` = (JᵀJ)⁻¹ g predicts: ½ gᵀstep (n - p) / cost, its squared length in
    standard errors."""
    dof = max(ne.n - n_params, 1)
    return 0.5 * float(g @ step) * dof / max(ne.cost, 1e-300)


def smallest_combination(gradients: list[np.ndarray],
                         solve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The convex combination g of ``gradients`` of least gᵀ H⁻¹ g (``solve(v)`` = H⁻¹ v):
    exact, over every subset's equality-constrained minimum (a handful of gradients)."""
    G = np.stack(gradients, 1)
    Q = G.T @ np.stack([solve(g) for g in gradients], 1)
    Q = 0.5 * (Q + Q.T)
    best, weights = np.inf, np.eye(len(gradients))[0]
    for size in range(1, len(gradients) + 1):
        for subset in itertools.combinations(range(len(gradients)), size):
            idx = list(subset)
            u = np.linalg.lstsq(Q[np.ix_(idx, idx)], np.ones(size), rcond=None)[0]
            if abs(u.sum()) < 1e-300:
                continue
            w = np.zeros(len(gradients))
            w[idx] = u / u.sum()
            value = float(w @ Q @ w)
            if np.all(w >= -1e-12) and value < best:
                best, weights = value, np.clip(w, 0.0, None) / np.clip(w, 0.0, None).sum()
    return G @ weights


def _inside(x, step, lb, ub) -> float:
    """PROBE_FRACTION, or half the fraction of ``step`` that reaches the box if less."""
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(step > 0, (ub - x) / step, np.where(step < 0, (lb - x) / step, np.inf))
    return min(PROBE_FRACTION, 0.5 * float(np.min(room, initial=np.inf)))


def minimum_at_kink(evaluate: Callable[[np.ndarray], NormalEquations], ne: NormalEquations,
                    x: np.ndarray, lb, ub, delta: np.ndarray,
                    solve: Callable[[np.ndarray], np.ndarray],
                    rounding_error: float = 0.0) -> KinkVerdict:
    """At a stalled point ``x`` (normal equations ``ne``, Gauss–Newton step ``delta`` =
    ``solve(ne.g)`` over the free parameters): is it a minimum on a kink? At most
    MAX_PROBES passes."""
    if ne.n <= 0 or not np.isfinite(ne.cost) or ne.cost <= 0.0 or not np.any(delta != 0):
        return KinkVerdict("", 0)
    resolution = cost_resolution(ne.cost, ne.n, rounding_error)
    gradients, step, rises = [ne.g], delta, []
    for probes in range(1, MAX_PROBES + 1):
        at = x + _inside(x, step, lb, ub) * step
        far = evaluate(at)
        rise = far.cost - ne.cost
        if not (np.isfinite(far.cost) and np.all(np.isfinite(far.g))):
            return KinkVerdict("", probes)
        if rise <= -resolution:  # the cost falls that way: no minimum
            if probes == 1:  # no kink met: a smooth stall, left to the caller's verdict
                return KinkVerdict("", probes)
            return KinkVerdict("", probes, step, (at, far))
        if rise <= resolution:
            return KinkVerdict("", probes)
        rises.append(rise)
        gradients.append(far.g)
        g = smallest_combination(gradients, solve)
        step = solve(g)
        gain = chi2_gain(ne, g, step, x.size)
        if gain <= KINK_CHI2:
            return KinkVerdict(
                f"minimum at a kink of the cost: the Gauss-Newton step promises "
                f"{chi2_gain(ne, ne.g, delta, x.size):.1e} units of chi2 but the cost rises "
                f"along it ({', '.join(f'+{r:.1e}' for r in rises)} at up to {PROBE_FRACTION:g} "
                f"of the step{'s' if probes > 1 else ''}), and the best combination of the "
                f"gradients on the kink's {len(gradients)} sides promises {gain:.1e}", probes)
    return KinkVerdict("", MAX_PROBES)
