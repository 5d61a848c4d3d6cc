"""Bounded Levenberg–Marquardt whose state is p x p: one pass over the data per iteration.

Each iteration evaluates a trial point with one pass that accumulates cost, JᵀJ and
Jᵀr in float64 over fixed-shape batches; if the trial is accepted those sums are
already the normal equations at the new point, so an iteration costs exactly one
pass. Steps are solved in Marquardt-scaled variables (columns of J normalised),
which tames the strong D0/alpha/D_offset correlation. Bounds are handled by
projection with an active set (variables on a bound whose gradient points out of
the box are frozen for that step; at a solve's first step, only those the step's
quadratic model also pushes out).

Coarse-to-fine: a large fit first converges on a deterministic strided subsample,
then finishes with full passes, so that it needs few of them.

Where Gauss-Newton converges only linearly (large residuals against the model's
nonlinearity), JᵀJ is corrected along the last accepted step by the curvature that
step's gradient change measured (``curvature.py``), at no extra pass.

Convergence is honest: "converged" means both the Gauss–Newton step is below
``step_tol_se`` standard errors for every free parameter and the scaled gradient
(cosine between residual and each Jacobian column) is below ``gtol``. Both tolerances
are floored at what the model's working precision can resolve (``precision.py``), so a
float32 model reports converged where its steps become evaluation noise; a step whose
predicted decrease is below the cost's rounding noise is judged by the gradients
(``precision.gain_ratio``), not by a difference of two noisy costs. A fit that stalls
on a kink of the cost (|C_J| where J changes sign) is converged where the gradients
of the kink's sides combined promise under 0.01 chi2 (``kink.py``); where their
combined step still lowers the cost, the fit goes on along it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from homodyne.optimization.covariance import column_scales as _scales
from homodyne.optimization.covariance import covariance_from_normal
from homodyne.optimization.curvature import SecantModel, geodesic_correction
from homodyne.optimization.exceptions import NLSQNumericalError, StopFit
from homodyne.optimization.kink import PROBE_FRACTION, minimum_at_kink
from homodyne.optimization.precision import (
    convergence_floors,
    cost_noise,
    gain_ratio,
    stalled_at_working_precision,
)
from homodyne.optimization.problems import NormalEquations
from homodyne.optimization.saddle import (
    MAX_ESCAPES,
    SaddleEscape,
    escape_saddle,
    escape_stationary,
)
from homodyne.optimization.settings import EngineOptions

__all__ = ["EngineOptions", "LMState", "covariance_from_normal", "first_step", "solve_lm",
           "trial_point"]


# --- linear algebra on the p x p state -------------------------------------------


def _solve_scaled(H, g, lam, free, d) -> np.ndarray:
    """Solve (H + lam diag(d^2)) delta = g on the free set (eigen-decomposition, robust)."""
    delta = np.zeros_like(g)
    if not free.any():
        return delta
    idx = np.flatnonzero(free)
    Hs = H[np.ix_(idx, idx)] / np.outer(d[idx], d[idx])
    gs = g[idx] / d[idx]
    w, V = np.linalg.eigh(Hs)
    w = w + lam
    tiny = max(w.max(), 1.0) * 1e-14
    inv = np.where(w > tiny, 1.0 / np.where(w > tiny, w, 1.0), 0.0)
    delta[idx] = (V @ (inv * (V.T @ gs))) / d[idx]
    return delta


def _on_bounds(x, lb, ub) -> tuple[np.ndarray, np.ndarray]:
    """(on the lower bound, on the upper bound), to 1e-12 of the range."""
    span = np.where(np.isfinite(ub - lb), ub - lb, 1.0)
    eps = 1e-12 * np.maximum(span, 1.0)
    return x <= lb + eps, x >= ub - eps


def _free_set(x, g, lb, ub) -> np.ndarray:
    """Variables not pinned on a bound by a gradient pointing out of the box."""
    at_lo, at_hi = _on_bounds(x, lb, ub)
    return ~((at_lo & (g < 0)) | (at_hi & (g > 0)))


def _bounded_step(H, g, lam, x, lb, ub, d, release=None) -> np.ndarray:
    """Damped step on the free set; a variable on a bound that the coupled solution would
    push out of the box is frozen too, and the step re-solved (active-set iteration)."""
    return _bounded_step_and_set(H, g, lam, x, lb, ub, d, release)[0]


def _bounded_step_and_set(H, g, lam, x, lb, ub, d,
                          release=None) -> tuple[np.ndarray, np.ndarray]:
    """``_bounded_step`` and the free set it was solved on. ``release`` (a mask, at a
    solve's first step; None: none): for those variables the active set of the step's
    box-constrained quadratic model, i.e. a variable
    held on its bound because its gradient points out is released where the model's
    gradient at the step solved without it (g - H delta) points into the box, one at a
    time, each at most once. From a start on a bound the gradient at x alone holds it
    while the others' first step, often long, takes the fit to the minimum at that bound
    (opt14 F8, seed 2114: a KKT point 1.4x SciPy's cost). Later steps release a held
    variable by its gradient at the next point (everywhere: 5 more passes on a measured
    window's walk along its edge)."""
    free = _free_set(x, g, lb, ub)
    at_lo, at_hi = _on_bounds(x, lb, ub)
    released = np.ones_like(free) if release is None else ~np.asarray(release, bool)
    delta = _solve_scaled(H, g, lam, free, d)
    for _ in range(2 * x.size + 2):
        out = free & (((x <= lb) & (delta < 0)) | ((x >= ub) & (delta > 0)))
        if out.any():
            free &= ~out
        else:
            model_g = g - H @ delta  # descent direction of the model at the step
            with np.errstate(invalid="ignore", divide="ignore"):
                pull = np.where(~free & ~released & ((at_lo & (model_g > 0))
                                                     | (at_hi & (model_g < 0))),
                                np.abs(model_g) / d, 0.0)
            if not np.any(pull > 0):
                break
            k = int(np.argmax(pull))
            free[k] = released[k] = True
        delta = _solve_scaled(H, g, lam, free, d)
    return delta, free


def _step_in_range(H, g, lam, x, lb, ub, d,
                   release=None) -> tuple[np.ndarray, np.ndarray]:
    """``_bounded_step_and_set``; where the box would cut that damped step to under
    BOX_CUT of itself, the trust region's axis along each bounded parameter is first
    limited to RANGE_FRACTION of its range: a parameter whose step goes further has its
    own Marquardt scale raised (doubled until it fits) and the step is re-solved.
    A parameter without influence at this point has a near-zero column, hence a tiny
    scale and a huge step; truncated to the box, that step cut every other parameter's
    to the same tiny fraction and the damping, judged on those steps, fell: a crawl (opt14
    seed 2031: D_offset's step 2e6 in [-1e3, 1e3] held the shear's steps at 1e-3 of
    theirs for 200 passes, bouncing between its bounds). A step the box cuts less (a
    parameter heading for the bound where its optimum lies) is left to the truncation,
    as are undamped steps."""
    delta, free = _bounded_step_and_set(H, g, lam, x, lb, ub, d, release)
    if lam <= 0 or _box_fraction(x, delta, lb, ub) >= BOX_CUT:
        return delta, free
    reach = RANGE_FRACTION * (ub - lb)
    d = d.copy()
    for _ in range(64):
        wide = free & np.isfinite(reach) & (np.abs(delta) > reach)
        if not wide.any():
            break
        d[wide] *= 2.0
        delta, free = _bounded_step_and_set(H, g, lam, x, lb, ub, d, release)
    return delta, free


def _box_limits(x, delta, lb, ub) -> np.ndarray:
    """Per parameter, the t at which x + t delta reaches its bound (inf where never)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_hi = np.where(delta > 0, (ub - x) / delta, np.inf)
        t_lo = np.where(delta < 0, (lb - x) / delta, np.inf)
    return np.minimum(t_hi, t_lo)


def _box_fraction(x, delta, lb, ub) -> float:
    """The largest t <= 1 with x + t delta inside the box."""
    return float(min(1.0, np.min(_box_limits(x, delta, lb, ub), initial=np.inf)))


def _truncate_to_box(x, delta, lb, ub) -> np.ndarray:
    """x + t delta with the largest t <= 1 that stays in the box (direction kept, so the
    step stays a descent direction; clipping each component would not). The variable
    that blocks is put exactly on its bound."""
    t_each = _box_limits(x, delta, lb, ub)
    t = float(min(1.0, np.min(t_each)))
    x_new = np.clip(x + t * delta, lb, ub)
    if t < 1.0:
        block = t_each <= t
        x_new[block] = np.where(delta[block] > 0, ub[block], lb[block])
    return x_new


# where the box would cut a damped step to under BOX_CUT of itself, that step moves each
# bounded parameter by at most RANGE_FRACTION of its range
BOX_CUT = 0.01
RANGE_FRACTION = 0.5


# --- the solver -----------------------------------------------------------------


@dataclass
class LMState:
    """Everything the solver carries between iterations (all p or p x p)."""

    x: np.ndarray
    ne: NormalEquations
    lam: float
    nu: float = 2.0
    iteration: int = 0
    evaluations: int = 1
    converged: bool = False
    reason: str = ""
    step_se: float = math.inf
    grad_cos: float = math.inf
    history: list = field(default_factory=list)
    saddle_escapes: list = field(default_factory=list)  # one line per saddle stepped off
    # geodesic acceleration: [steps accelerated, steps where 2|a|/|v| was too large]
    geodesic_steps: list = field(default_factory=lambda: [0, 0])


def _finite(ne: NormalEquations) -> bool:
    return bool(np.isfinite(ne.cost) and np.all(np.isfinite(ne.H)) and np.all(np.isfinite(ne.g)))


def _convergence_measures(ne: NormalEquations, x, lb, ub, n_params):
    """(max GN step in standard errors, max gradient cosine) over the free parameters."""
    free = _free_set(x, ne.g, lb, ub)
    dof = max(ne.n - n_params, 1)
    chi2r = 2.0 * ne.cost / dof
    delta = _solve_scaled(ne.H, ne.g, 0.0, free, _scales(ne.H))
    cov = covariance_from_normal(ne.H, max(chi2r, 1e-300), free)
    se = np.sqrt(np.abs(np.diag(cov)))
    with np.errstate(invalid="ignore", divide="ignore"):
        step = np.where(free & (se > 0), np.abs(delta) / se, 0.0)
        cos = np.where(free, np.abs(ne.g) / (np.sqrt(np.diag(ne.H)) * math.sqrt(2 * ne.cost)),
                       0.0)
    return float(np.nanmax(step, initial=0.0)), float(np.nanmax(np.nan_to_num(cos), initial=0.0))


def first_step(ne: NormalEquations, x, lb, ub, lam: float) -> np.ndarray:
    """The damped step the solver would take first from x (damping ``lam``)."""
    return _bounded_step(ne.H, ne.g, lam, np.asarray(x, float), lb, ub, _scales(ne.H),
                         release=np.ones(np.size(x), bool))


def trial_point(ne: NormalEquations, x, lb, ub, lam: float) -> np.ndarray:
    """Where the solver's first damped step (damping ``lam``) from x would land: no pass."""
    x = np.asarray(x, float)
    return _truncate_to_box(x, first_step(ne, x, lb, ub, lam), lb, ub)


def solve_lm(evaluate: Callable[[np.ndarray], NormalEquations], x0, lb, ub, *,
             max_iterations: int, step_tol_se: float, gtol: float, ftol: float,
             initial_damping: float, ne0: NormalEquations | None = None,
             on_iteration: Callable | None = None,
             good_enough: Callable[[LMState], str | None] | None = None,
             gn_trust_se: float = 1.0,
             eval_error: Callable[[np.ndarray], float] | None = None,
             rounding_error: Callable[[np.ndarray], float] | None = None,
             geodesic: Callable[[np.ndarray, np.ndarray], np.ndarray | None] | None = None,
             release: np.ndarray | None = None) -> LMState:
    """Bounded LM from x0; ``evaluate`` makes one pass and returns the normal equations.

    ``eval_error(x)``: bound on the absolute error of one model value at x (0 or None:
    exact to float64); it floors ``step_tol_se`` and ``gtol`` (``convergence_floors``).
    ``rounding_error(x)``: the same bound whatever the dtype (float64 included); a fit
    that stalls is reported converged where it cannot improve at that precision
    (``stalled_at_working_precision``).

    ``geodesic(x, v)``: Jᵀ r''_v at x by one more pass (None: no acceleration, the
    default); each trial step v then gets geodesic acceleration (``_accelerate``).

    ``good_enough(st)``: a caller's own earlier stop (a one-line reason, or None to go on),
    asked where the convergence test fails; the stop then counts as converged.

    ``gn_trust_se``: the undamped Gauss-Newton step is tried first when it is under this
    many standard errors. The quadratic model's range does not shrink with the data, so
    a stage that starts from a coarser level's optimum (n_c points) trusts
    sqrt(n / n_c) of its own standard errors, one of the coarser level's.

    ``release``: the variables a held bound is released from by the first step's model
    (``_bounded_step_and_set``; None: all)."""
    x = np.array(x0, dtype=float)  # a copy; x0 inside [lb, ub] (checked at the facade)
    ne = ne0 if ne0 is not None else evaluate(x)
    st = LMState(x=x, ne=ne, lam=initial_damping, evaluations=0 if ne0 is not None else 1)
    loop = dict(max_iterations=max_iterations, step_tol_se=step_tol_se, gtol=gtol, ftol=ftol,
                on_iteration=on_iteration, gn_trust_se=gn_trust_se, eval_error=eval_error,
                geodesic=geodesic, good_enough=good_enough,
                release=np.ones(x.size, bool) if release is None else np.asarray(release, bool))
    try:
        st = _solve(st, evaluate, lb, ub, loop, rounding_error, initial_damping, MAX_ESCAPES)
        st.reason += "".join(f"; {e}" for e in st.saddle_escapes)
        return st
    except StopFit as stop:
        st.reason = str(stop)
        st.converged = False
        return st


def stopped(st: LMState) -> bool:
    """Whether a solve ended on a stop (a callback's or a signal's: ``StopFit``), not on a
    verdict of its own; the stages after it must not run."""
    return st.reason.startswith(("stopped", "interrupted by"))


def _tolerances(st: LMState, step_tol_se, gtol, eval_error) -> tuple[float, float, str]:
    """(step tolerance, gradient tolerance, note) at the current point: the requested
    ones, or the working-precision floors where those are larger."""
    error = eval_error(st.x) if eval_error is not None else 0.0
    step_floor, cos_floor = convergence_floors(error, st.ne.cost, st.ne.n, st.x.size)
    note = " (floored at working precision)" if step_floor > step_tol_se or \
        cos_floor > gtol else ""
    return max(step_tol_se, step_floor), max(gtol, cos_floor), note


def _cost_noise(st: LMState, eval_error) -> float:
    """The cost change a pass at ``st.x`` cannot resolve (``precision.cost_noise``)."""
    error = eval_error(st.x) if eval_error is not None else 0.0
    return cost_noise(st.ne.cost, error)


def _converged(st: LMState, step_tol_se, gtol, eval_error) -> tuple[bool, str]:
    """The convergence test and its one-line explanation."""
    step_tol, g_tol, note = _tolerances(st, step_tol_se, gtol, eval_error)
    ok = st.step_se <= step_tol and st.grad_cos <= g_tol
    return ok, (f"Gauss-Newton step {st.step_se:.2e} standard errors <= {step_tol:.2g}, "
                f"gradient cosine {st.grad_cos:.2e} <= {g_tol:.2g}{note}")


def _judge_stall(st: LMState, evaluate, lb, ub, rounding_error,
                 eval_error=None) -> SaddleEscape | None:
    """A fit that stopped short of the convergence test is converged all the same where
    no pass can resolve a further decrease (``precision.stalled_at_working_precision``),
    or where it stalled (not stopped by the iteration cap) at a minimum on a kink of the
    cost (``kink.py``: up to ``kink.MAX_PROBES`` more passes); ``eval_error`` > 0: the
    model evaluates in reduced precision (float32). Where a probe finds the cost still
    falling along a step the damped steps missed, where to go on from (a line search)."""
    if not _finite(st.ne) or st.ne.n <= 0:
        return None
    free = _free_set(st.x, st.ne.g, lb, ub)
    delta = _solve_scaled(st.ne.H, st.ne.g, 0.0, free, _scales(st.ne.H))
    gn_decrease = 0.5 * float(st.ne.g @ delta)
    error = rounding_error(st.x) if rounding_error is not None else 0.0
    reduced = eval_error is not None and eval_error(st.x) > 0.0
    why = stalled_at_working_precision(gn_decrease, st.ne.cost, st.ne.n, st.step_se, error,
                                       reduced)
    if why:
        st.converged = True
        st.reason = f"{why} (stopped: {st.reason})"
        return None
    if st.reason.startswith("maximum iterations"):
        return None  # still accepting steps: not stalled, so no kink's signature
    kink = minimum_at_kink(evaluate, st.ne, st.x, lb, ub, delta,
                           lambda v: _solve_scaled(st.ne.H, v, 0.0, free, _scales(st.ne.H)),
                           error)
    st.evaluations += kink.evaluations
    if kink.description:
        st.converged = True
        st.reason = f"{kink.description} (stopped: {st.reason})"
    if kink.descent is None or kink.lower is None:
        return None
    return _line_search(evaluate, st, kink.descent, kink.lower, lb, ub)


def _line_search(evaluate, st: LMState, step, lower, lb, ub) -> SaddleEscape:
    """From a stall on a kink where the cost still falls a little way along ``step`` (the
    point and normal equations ``lower`` found it): the longest of step, step/4, ... (to
    the probe's length) that lowers the cost below ``lower``'s, else ``lower`` itself."""
    x, ne = lower
    t, tried = 1.0, 0
    while t > PROBE_FRACTION:
        x_t = _truncate_to_box(st.x, t * step, lb, ub)
        ne_t = evaluate(x_t)
        tried += 1
        if _finite(ne_t) and ne_t.cost < ne.cost:
            x, ne = x_t, ne_t
            break
        t /= 4.0
    return SaddleEscape(x, ne, tried, f"stalled on a kink where the combined step still "
                        f"lowers the cost: went on from {t if t > PROBE_FRACTION else 0:g} of it "
                        f"(cost {st.ne.cost:.10g} -> {ne.cost:.10g})")


def _solve(st: LMState, evaluate, lb, ub, loop: dict, rounding_error, initial_damping,
           escapes_left: int) -> LMState:
    """The LM loop, the verdict on a stall (where a step along a kink still lowers the
    cost, a fit on from the line search's point: ``_line_search``), and at a converged
    point that is a saddle (on a bound, or off them along a parameter without influence:
    ``saddle.py``) a fit from where the held parameter is released or the cost is lower:
    its result replaces this one where it converges lower; else this one stands, with a
    note."""
    st = _lm_loop(st, evaluate, lb, ub, **loop)
    onward = None
    if not st.converged and not stopped(st):
        onward = _judge_stall(st, evaluate, lb, ub, rounding_error, loop["eval_error"])
    if onward is not None and escapes_left > 0:
        sub = _solve(LMState(x=onward.x, ne=onward.ne, lam=initial_damping, evaluations=0,
                             iteration=st.iteration), evaluate, lb, ub, loop, rounding_error,
                     initial_damping, escapes_left - 1)
        sub.evaluations += st.evaluations + onward.evaluations
        sub.history = st.history + sub.history
        sub.saddle_escapes = st.saddle_escapes + [onward.description] + sub.saddle_escapes
        return sub  # lower than st, which did not converge
    if not st.converged or escapes_left <= 0:
        return st
    held = ~_free_set(st.x, st.ne.g, lb, ub)
    escape = escape_saddle(evaluate, st.ne, st.x, lb, ub, held) or \
        escape_stationary(evaluate, st.ne, st.x, lb, ub, held)
    if escape is None:
        return st
    sub = _solve(LMState(x=escape.x, ne=escape.ne, lam=initial_damping, evaluations=0,
                         iteration=st.iteration), evaluate, lb, ub, loop, rounding_error,
                 initial_damping, escapes_left - 1)
    evaluations = st.evaluations + escape.evaluations + sub.evaluations
    if sub.converged and sub.ne.cost < st.ne.cost:
        sub.evaluations = evaluations
        sub.history = st.history + sub.history
        sub.saddle_escapes = st.saddle_escapes + [escape.description] + sub.saddle_escapes
        return sub
    st.evaluations = evaluations
    st.saddle_escapes.append(f"a saddle: stepping off it ({escape.description}) "
                             f"reached no lower converged minimum ({sub.reason}), so the fit "
                             "stays here")
    return st


def _accelerate(st: LMState, geodesic, B, lam, free, d, delta) -> np.ndarray:
    """The step with geodesic acceleration: ``geodesic(x, v)`` makes one pass for
    q = Jᵀ r''_v (``geodesic.py``); the step becomes v + ½ a where 2|a|/|v| is small
    enough (``curvature.geodesic_correction``)."""
    q = geodesic(st.x, delta)
    st.evaluations += 1
    half_a, ratio = geodesic_correction(lambda rhs: _solve_scaled(B, rhs, lam, free, d),
                                        delta, q, d)
    st.geodesic_steps[0 if np.any(half_a != 0) else 1] += 1
    return delta + half_a


def _lm_loop(st: LMState, evaluate, lb, ub, *, max_iterations, step_tol_se, gtol, ftol,
             on_iteration, gn_trust_se, eval_error, geodesic=None,
             good_enough=None, release=None) -> LMState:
    """The iteration itself; ``st`` always holds the best accepted point."""
    x, ne = st.x, st.ne
    if not _finite(ne):
        user = getattr(evaluate, "user", None)  # a SolverSpace's: the internal u is no p0
        error = NLSQNumericalError(
            "Non-finite cost or gradients at the initial parameters "
            f"{(x if user is None else user(x)).tolist()}: check p0, bounds and the data")
        error.at_start = True  # type: ignore[attr-defined]
        raise error
    p = x.size
    d = _scales(ne.H)
    gn_failed_at = math.inf
    secant = SecantModel(p)  # what JᵀJ misses of the Hessian, from accepted steps
    noise = _cost_noise(st, eval_error)
    first = True  # no step accepted yet: a held bound is released by the step's model
    while True:
        st.step_se, st.grad_cos = _convergence_measures(st.ne, st.x, lb, ub, p)
        st.history.append(dict(iteration=st.iteration, cost=st.ne.cost, lam=st.lam,
                               step_se=st.step_se, grad_cos=st.grad_cos))
        if on_iteration is not None and on_iteration(st) is False:
            st.reason = "stopped by callback"
            return st
        ok, why = _converged(st, step_tol_se, gtol, eval_error)
        enough = None if ok or good_enough is None else good_enough(st)
        if enough:
            ok, why = True, enough
        if ok:
            st.converged = True
            st.reason = why
            return st
        if st.iteration >= max_iterations:
            st.reason = f"maximum iterations ({max_iterations} per solver stage) reached"
            return st
        d = np.maximum(d, _scales(st.ne.H))
        # Inside the quadratic basin (predicted step under gn_trust_se standard errors)
        # try the undamped Gauss-Newton step first: it converges in one or two passes
        # there ... unless one was just rejected: then wait until the step has halved
        try_gauss_newton = st.step_se < min(gn_trust_se, 0.5 * gn_failed_at)
        curvature = secant.correction(st.ne.H)
        B = st.ne.H if curvature is None else st.ne.H + curvature
        # inner loop: raise the damping until a step is accepted
        rejected = False
        while True:
            lam = 0.0 if try_gauss_newton else st.lam
            delta, free = _step_in_range(B, st.ne.g, lam, st.x, lb, ub, d,
                                         release=release if first else None)
            x_try = _truncate_to_box(st.x, delta, lb, ub)
            step = x_try - st.x
            pred = float(step @ st.ne.g - 0.5 * step @ B @ step)
            if not np.any(step != 0) or pred <= 0:
                if try_gauss_newton:
                    try_gauss_newton = False
                    continue
                st.reason = "no further decrease possible (step vanished at working precision)"
                return st
            if geodesic is not None:  # judged against the velocity's predicted decrease
                x_try = _truncate_to_box(st.x, _accelerate(st, geodesic, B, lam, free, d,
                                                           delta), lb, ub)
                step = x_try - st.x
            ne_try = evaluate(x_try)
            st.evaluations += 1
            actual = st.ne.cost - ne_try.cost if _finite(ne_try) else -math.inf
            rho = gain_ratio(st.ne, ne_try, step, actual, pred, noise)
            if rho > 1e-4:
                rel = actual / max(st.ne.cost, 1e-300)
                # only a step inside the quadratic basin measures the curvature near the
                # optimum (a long one averages it over the way there)
                if st.step_se < gn_trust_se:
                    secant.update(st.ne, ne_try, step, blocked=bool(np.any(
                        ((x_try <= lb) | (x_try >= ub)) & (st.x > lb) & (st.x < ub))))
                st.x, st.ne = x_try, ne_try
                first = False
                noise = _cost_noise(st, eval_error)
                # the damping a step was just rejected at is not lowered at once: the
                # quadratic model was found unreliable on that scale (the walk along a
                # curved valley otherwise alternates one accepted and two rejected steps)
                if not rejected:
                    st.lam *= max(0.1, 1.0 - (2.0 * rho - 1.0) ** 3)
                st.nu = 2.0
                st.iteration += 1
                if rel <= ftol and pred / max(st.ne.cost, 1e-300) <= ftol:
                    st.step_se, st.grad_cos = _convergence_measures(st.ne, st.x, lb, ub, p)
                    st.converged = _converged(st, step_tol_se, gtol, eval_error)[0]
                    st.reason = (f"relative cost change {rel:.1e} <= ftol; step "
                                 f"{st.step_se:.2e} standard errors")
                    return st
                break
            st.iteration += 1
            rejected = True
            if try_gauss_newton:
                try_gauss_newton = False
                gn_failed_at = st.step_se
            else:
                st.lam *= st.nu
                st.nu *= 2.0
            if st.lam > 1e16 or st.iteration >= max_iterations:
                st.reason = ("damping overflow: no step reduces the cost" if st.lam > 1e16
                             else f"maximum iterations ({max_iterations} per solver stage) reached")
                return st
