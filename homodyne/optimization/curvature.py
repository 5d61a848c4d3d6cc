"""What the Gauss-Newton model JᵀJ misses along the last step, from what passes give.

Where the residuals are large against the model's nonlinearity (poorly determined
parameters, e.g. a weak shear rate), the Hessian of ½ Σ r² is JᵀJ + Σ r ∇²r, not
JᵀJ, and Gauss-Newton converges only linearly: on the laminar model each step
overshoots by ~45% along the shear direction, 16 passes where 6 would do. The change
of the gradient over an accepted step measures the true curvature along that step
exactly (to second order) at no extra pass; ``secant_curvature`` turns it into a
rank-one correction of JᵀJ along that direction (a one-step structured secant update,
as in NL2SOL).
"""

from __future__ import annotations

import math

import numpy as np

from homodyne.optimization.problems import NormalEquations

# the corrected curvature along the step stays within these factors of JᵀJ's: the
# correction keeps the model positive definite and cannot stall the solver
MIN_FACTOR, MAX_FACTOR = 0.5, 5.0
# JᵀJ within this fraction of the measured curvature is left as it is (Gauss-Newton's
# quadratic convergence, and its results bit for bit, where it is good)
NEGLIGIBLE = 1e-2


def secant_curvature(old: NormalEquations, new: NormalEquations, step: np.ndarray,
                     blocked: bool = False):
    """The p x p correction C (or None) with sᵀ(H_new + C)s equal to the curvature of
    the cost along ``step`` s measured by the gradient change, -sᵀ(g_new - g_old)
    (g = Jᵀr, r = data - model), and C zero on directions JᵀJ-orthogonal to s.
    None for a step that a bound ``blocked`` (the active set changed: the next step
    lies in another subspace) and where JᵀJ is already right along s."""
    if blocked:
        return None
    Hs = new.H @ step
    gn = 0.5 * float(step @ old.H @ step + step @ Hs)
    true = float(step @ (old.g - new.g))
    if not (np.isfinite(gn) and np.isfinite(true)) or gn <= 0.0:
        return None
    factor = min(max(true / gn, MIN_FACTOR), MAX_FACTOR)
    if abs(factor - 1.0) < NEGLIGIBLE:
        return None
    shs = float(step @ Hs)
    if shs <= 0.0:
        return None
    return (factor - 1.0) * np.outer(Hs, Hs) / shs


# --- geodesic acceleration (Transtrum & Sethna 2012), opt-in -------------------------

# the usual acceptance: the acceleration's share of the step, 2|a|/|v| in the Marquardt-
# scaled variables, at most this; beyond it the plain step is taken
ALPHA_RATIO = 0.75


def geodesic_correction(solve, velocity, q, d, alpha_ratio: float = ALPHA_RATIO):
    """(½ a, 2|a|/|v|) for the LM step ``velocity`` v, where a = -solve(q) solves the
    geodesic equation along v (``solve``: the damped normal matrix's inverse on the
    step's free set; q = Jᵀ r''_v, r'' the residuals' second directional derivative
    along v; ``d`` the Marquardt scales). ½ a is zero where 2|a|/|v| > ``alpha_ratio``."""
    zero = np.zeros_like(velocity)
    if q is None or not np.all(np.isfinite(q)):
        return zero, math.inf
    a = -solve(np.asarray(q, np.float64))
    v_norm = float(np.linalg.norm(d * velocity))
    ratio = 2.0 * float(np.linalg.norm(d * a)) / v_norm if v_norm > 0 else math.inf
    return (0.5 * a if ratio <= alpha_ratio else zero), ratio
