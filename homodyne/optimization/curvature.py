"""What the Gauss-Newton model JᵀJ misses along the last step, from what passes give.

Where the residuals are large against the model's nonlinearity (poorly determined
parameters, e.g. a weak shear rate), the Hessian of ½ Σ r² is JᵀJ + Σ r ∇²r, not
JᵀJ, and Gauss-Newton converges only linearly: on the laminar model each step
overshoots by ~45% along the shear direction, 16 passes where 6 would do. The change
of the gradient over an accepted step measures the true curvature along that step
exactly (to second order) at no extra pass; ``SecantModel`` learns Σ r ∇²r from those
changes (structured symmetric rank-one updates, as in NL2SOL) inside the quadratic basin.
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
NEGLIGIBLE = 0.1


class SecantModel:
    """S, the part Σ r ∇²r of the cost's Hessian that JᵀJ misses, learnt from the
    gradient changes over accepted steps by symmetric rank-one updates (as NL2SOL):
    after an update, sᵀ(JᵀJ + S)s is the curvature -sᵀ(g_new - g_old) measured along the
    step s (g = Jᵀr, r = data - model)."""

    def __init__(self, n: int):
        self.S = np.zeros((n, n))

    def update(self, old: NormalEquations, new: NormalEquations, step: np.ndarray,
               blocked: bool = False) -> None:
        """Learn from ``step`` (nothing from a step a bound ``blocked``: it left the
        subspace whose curvature the gradient change measures)."""
        if blocked:
            return
        y = (old.g - new.g) - 0.5 * (old.H + new.H) @ step
        u = y - self.S @ step
        den = float(u @ step)
        if not np.all(np.isfinite(u)) or \
                abs(den) <= 1e-8 * float(np.linalg.norm(u) * np.linalg.norm(step)):
            return
        self.S = self.S + np.outer(u, u) / den

    def correction(self, H: np.ndarray):
        """S with its curvature relative to JᵀJ (eigenvalues of H^-½ S H^-½) held within
        [MIN_FACTOR - 1, MAX_FACTOR - 1], or None where it is negligible: JᵀJ + S stays
        positive definite and the solver never stalls on it."""
        if not np.any(self.S):
            return None
        diag = np.diag(H)
        d = np.sqrt(np.where(diag > 0, diag, 1.0))
        dd = np.outer(d, d)
        w, V = np.linalg.eigh(H / dd)
        keep = w > max(w.max(), 0.0) * 1e-10
        if not keep.any():
            return None
        Vk, sq = V[:, keep], np.sqrt(w[keep])
        M = (Vk.T @ (self.S / dd) @ Vk) / np.outer(sq, sq)
        mu, U = np.linalg.eigh(0.5 * (M + M.T))
        mu = np.clip(mu, MIN_FACTOR - 1.0, MAX_FACTOR - 1.0)
        if np.max(np.abs(mu)) < NEGLIGIBLE:
            return None
        M = (U * mu) @ U.T
        return (Vk @ (M * np.outer(sq, sq)) @ Vk.T) * dd


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
