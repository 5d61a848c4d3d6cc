"""Working precision of one model evaluation, and the convergence floors it sets.

A float32 model forms its frame-integral differences and c2 in float64 and only g1
(and the derivatives) in float32 (model.py): each point's value then carries a rounding
error of a few eps_32 |contrast|, independent from point to point (measured: rms
0.2-0.4, max 2.2 eps_32 |contrast|). Independent errors of scale delta move

* the gradient cosine |g_j| / (||J_j|| ||r||) by about delta / (rms(r) sqrt(n));
* the Gauss-Newton step by about delta / sigma standard errors, whatever n

(a bound that holds whatever their correlation, Cauchy-Schwarz, is sqrt(n) times
larger: at a 0.01 standard-error floor it let float32 stop one pass before float64 in
every stage). Below FLOOR_FACTOR times those the step and the gradient are evaluation
noise, so asking for less would only stall the fit ("step vanished at working
precision") without moving it closer to the optimum.
"""

from __future__ import annotations

import math

import numpy as np

# the step floor never exceeds this many standard errors: where the working precision
# cannot resolve the optimum better than that, the fit says it did not converge
MAX_STEP_FLOOR_SE = 1e-2
# the floors in units of one point's error scale (above), with room for the largest of
# p parameters' noise and the error's spread
FLOOR_FACTOR = 10.0


def evaluation_error(problem, params) -> float:
    """Scale of the absolute error of one model value at ``params`` (full vector): eps
    of the model's dtype times the largest |contrast| (only g1 is evaluated in it);
    0 where it evaluates in float64."""
    spec = getattr(problem, "spec", None)
    if spec is None or spec.dtype == "float64":
        return 0.0
    contrast, _, _ = spec.split(np.asarray(params, np.float64))
    return float(np.finfo(np.dtype(spec.dtype)).eps) * float(np.max(np.abs(contrast)))


def convergence_floors(error: float, cost: float, n: int, n_params: int) -> tuple[float, float]:
    """(step floor in standard errors, gradient-cosine floor) for independent per-point
    errors of scale ``error`` at a point with cost ½ Σ r² over ``n`` points."""
    if error <= 0.0 or n <= 0 or cost <= 0.0:
        return 0.0, 0.0
    rms = math.sqrt(2.0 * cost / n)
    sigma = math.sqrt(2.0 * cost / max(n - n_params, 1))
    return (min(FLOOR_FACTOR * error / sigma, MAX_STEP_FLOOR_SE),
            FLOOR_FACTOR * error / (rms * math.sqrt(n)))


# --- stalls at working precision (float64 too) -------------------------------------

EPS64 = float(np.finfo(np.float64).eps)
# a stalled fit whose residuals' rms is within this many rounding errors of one model
# value has fitted noise-free data exactly, as far as the arithmetic can tell. In float64
# the frame integrals' differences amplify the rounding (cancellation), hence the margin;
# a float32 model's differences and c2 are formed in float64 (model.py), so its rms on
# noise-free data is about eps_32 |c2| / 3: 1e4 of those (1e-3) would be real noise
RESIDUAL_FLOOR_FACTOR = 1e4
REDUCED_PRECISION_RESIDUAL_FACTOR = 10.0


def rounding_error(problem, params) -> float:
    """Bound on the rounding error of one model value whatever its dtype (eps of the
    model's dtype times a bound on |model|); for a generic curve, eps64 times the largest
    weighted data value (its ``value_scale``, 0 where unknown)."""
    spec = getattr(problem, "spec", None)
    if spec is None:
        return EPS64 * float(getattr(problem, "value_scale", 0.0))
    contrast, offset, _ = spec.split(np.asarray(params, np.float64))
    # c2 = offset + contrast g1^2 with 0 <= g1^2 <= 1
    bound = float(np.max(np.abs(offset) + np.abs(contrast)))
    return float(np.finfo(np.dtype(spec.dtype)).eps) * bound


def residual_variance_floor(problem, params) -> float:
    """The smallest residual variance a fit can report at ``params``: the square of the
    residual rms below which the residuals count as vanished at working precision
    (``stalled_at_working_precision``). Standard errors scaled by a smaller variance (0 on
    noise-free data) would call a parameter the data do not constrain exact: c2 without
    contrast does not depend on D0 at all, and its standard error was "+/- 0"."""
    reduced = evaluation_error(problem, params) > 0.0
    factor = REDUCED_PRECISION_RESIDUAL_FACTOR if reduced else RESIDUAL_FLOOR_FACTOR
    return (factor * rounding_error(problem, params)) ** 2


def cost_resolution(cost: float, n: int, error: float) -> float:
    """The smallest change of the cost ½ Σ r² that a pass resolves: the float64 sum's
    rounding (eps √n per unit of cost) plus the model's (‖r‖ √n ``error``)."""
    n = max(n, 1)
    return EPS64 * math.sqrt(n) * cost + math.sqrt(2.0 * max(cost, 0.0) * n) * error


def stalled_at_working_precision(gn_decrease: float, cost: float, n: int, step_se: float,
                                 error: float, reduced_precision: bool = False) -> str:
    """Why a fit that can make no further progress is nonetheless at its optimum, or "".

    Either the decrease the full Gauss-Newton step predicts is below what a pass can
    resolve (and that step is under MAX_STEP_FLOOR_SE standard errors), or the residuals
    themselves have vanished to the model's rounding error (noise-free data, where
    standard errors are rounding noise too); ``reduced_precision``: the model evaluates
    in float32 (``error`` its rounding), whose floor has a smaller margin."""
    resolution = cost_resolution(cost, n, error)
    if gn_decrease <= resolution and step_se <= MAX_STEP_FLOOR_SE:
        return (f"at working precision: the Gauss-Newton step ({step_se:.1e} "
                f"standard errors) predicts a decrease {gn_decrease:.1e} below the cost's "
                f"resolution {resolution:.1e}")
    rms = math.sqrt(2.0 * max(cost, 0.0) / max(n, 1))
    factor = REDUCED_PRECISION_RESIDUAL_FACTOR if reduced_precision else RESIDUAL_FLOOR_FACTOR
    if error > 0 and rms <= factor * error:
        return (f"residuals vanished at working precision (rms {rms:.1e} <= "
                f"{factor:.0e} x rounding error {error:.1e})")
    return ""


# --- judging a step below the cost's resolution --------------------------------------

# the cost difference of two nearby points carries the rounding of both: about
# ||r|| x error / 2.5 for independent roundings; this many times that is noise
COST_NOISE_FACTOR = 3.0


def cost_noise(cost: float, error: float) -> float:
    """The change of ½ Σ r² below which two passes' costs cannot be told apart, for a
    per-point model error ``error`` (0 in float64: every change counts)."""
    if error <= 0.0 or not math.isfinite(cost):
        return 0.0
    return COST_NOISE_FACTOR * math.sqrt(2.0 * max(cost, 0.0)) * error


def gain_ratio(old, new, step, actual: float, pred: float, noise: float) -> float:
    """Actual over predicted decrease of the cost for ``step`` between passes ``old`` and
    ``new`` (normal equations, g = Jᵀr). Where the prediction is below the cost's noise,
    the decrease is measured by the trapezoid rule on the gradients, ½ sᵀ(g_old + g_new),
    whose rounding shrinks with the step (the costs' does not); a cost increase beyond
    the noise still rejects the step."""
    if not math.isfinite(actual) or pred <= 0.0:
        return actual / pred if pred > 0.0 else -math.inf
    if noise > 0.0 and pred < noise and actual > -noise:
        return 0.5 * float(step @ (old.g + new.g)) / pred
    return actual / pred
