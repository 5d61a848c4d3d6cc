"""Well-conditioned internal coordinates for the power laws J(t) and gdot(t).

The user writes J(t) = D0 t^alpha + D_offset, with the amplitude defined at t = 1 s,
far from the data window: amplitude, exponent and offset are then strongly coupled
and the least-squares valley is curved. Internally each power law is written about a
reference time t_r inside the data (the geometric mean of the frame times), in the
Box-Cox form

    J(t) = level + slope (s^alpha - 1) / alpha,   s = t / t_r,

so level = J(t_r), slope = dJ/dln t at t_r and alpha = 0 (logarithmic J) is an
ordinary point. The map is exact:

    level = D0 t_r^alpha + D_offset,   slope = alpha D0 t_r^alpha,
    D0 = slope / (alpha t_r^alpha),     D_offset = level - slope / alpha.

The solver sees the normal equations through the map's Jacobian (JᵀJ -> Φᵀ JᵀJ Φ,
Jᵀr -> Φᵀ Jᵀr, Φ = dx/du); the model, the user's parameters and bounds are untouched.
A triple with a fixed member stays in user coordinates.

A lower bound amplitude >= 0 (D0 >= 0) is the sign condition slope * alpha >= 0: two
quadrants of (slope, alpha), each a box (``quadrant``): J increasing (slope >= 0,
alpha >= EDGE_ALPHA) or decreasing (slope <= 0, alpha <= -EDGE_ALPHA). The internal fit
holds one from the start (``start_side``). At its end the multipliers of the held
limits say which case it is: none binds (the sign condition is not active), alpha's
binds (the bound pushes the optimum to the logarithmic edge of the family,
J = level + slope ln s, D0 -> inf, D_offset -> -inf; the user's amplitude and offset are
then reported as not determined while J(t) stays determined) or the slope's binds (J's
trend is the other one: the other quadrant is fitted).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from homodyne.optimization.fixed import FreeSubspace
from homodyne.optimization.problems import NormalEquations

# |alpha| below this is evaluated at this value (the map's only singular point):
# J changes by O(1e-12 slope ln^2 s), far below any data's resolution
_ALPHA_MIN = 1e-12
# Near alpha = 0 the map's Jacobian has entries ~ slope/alpha^2 whose products cancel in
# Φᵀ JᵀJ Φ: its alpha row loses ~1e-16/alpha^4 of its precision. So the internal fit keeps
# |alpha| >= EDGE_ALPHA where the sign condition holds it (1e-4 relative error; the
# logarithmic edge to within slope * 1e-3 * ln^2 s / 2 in J, which the finish in user
# coordinates removes), and a start with |alpha| < START_ALPHA (a plain start has 0)
# starts at +-START_ALPHA, the same J where the slope is 0
EDGE_ALPHA = 1e-3
START_ALPHA = 1e-2
# the maps below overflow (t_r^alpha for |alpha| in the hundreds) or divide by it: their
# callers judge a non-finite result (a start falls back to its point in the user's box,
# a pass's non-finite model fails its batch, the solver rejects a non-finite step), so
# numpy's RuntimeWarnings would only reach the console as noise (np.errstate below)


@dataclass(frozen=True)
class PowerLawCoordinates:
    """(amplitude, exponent, offset) index triples of a full vector and their t_r.

    Internal vector u: the amplitude slot holds the slope, the offset slot the level,
    the exponent is shared; every other entry is the user's own."""

    t_ref: float
    triples: tuple[tuple[int, int, int], ...]
    log_span: float = 0.0  # ln(t_max / t_min) of the data's frame times

    @classmethod
    def for_problem(cls, problem, lb, ub) -> PowerLawCoordinates | None:
        """The power laws of a two-time problem whose three parameters are all free;
        None where there is none (static fits still have J, curve fits have none)."""
        spec = getattr(problem, "spec", None)
        if spec is None:
            return None
        base = 2 * spec.n_scaling_sets
        laws = [(base, base + 1, base + 2)]
        if spec.mode == "laminar_flow":
            laws.append((base + 3, base + 4, base + 5))
        free = np.asarray(lb) < np.asarray(ub)
        laws = [t for t in laws if free[list(t)].all()]
        if not laws:
            return None
        t = spec.frame_times()
        lt = np.log(t)
        # a NumPy float: t_r ** alpha overflows to inf (a Python float raises OverflowError,
        # e.g. frame times of 1e-9 s when alpha is re-solved far from its bounds)
        return cls(np.float64(np.exp(np.mean(lt))), tuple(laws), float(lt.max() - lt.min()))

    def at_log_edge(self, alpha: float) -> bool:
        """Whether t^alpha is 1 + alpha ln t to 1e-6 over the data: the power law is then
        the logarithmic edge of the family, and only level and slope are determined."""
        return abs(alpha) * self.log_span <= 1e-3

    def _alpha(self, a):
        return np.where(np.abs(a) < _ALPHA_MIN, np.copysign(_ALPHA_MIN, a + 0.0), a)

    def to_internal(self, x) -> np.ndarray:
        u = np.array(x, np.float64)
        with np.errstate(all="ignore"):
            for i, a, o in self.triples:
                k = x[i] * self.t_ref ** x[a]
                u[i], u[o] = x[a] * k, k + x[o]
        return u

    def to_user(self, u) -> np.ndarray:
        x = np.array(u, np.float64)
        with np.errstate(all="ignore"):
            for i, a, o in self.triples:
                al = float(self._alpha(u[a]))
                x[i] = u[i] / (al * self.t_ref ** al)
                x[o] = u[o] - u[i] / al
        return x

    def jacobian(self, u) -> np.ndarray:
        """Φ = dx/du at u (identity outside the triples)."""
        phi = np.eye(len(u))
        lt = np.log(self.t_ref)
        with np.errstate(all="ignore"):
            for i, a, o in self.triples:
                al = float(self._alpha(u[a]))
                d0 = u[i] / (al * self.t_ref ** al)
                phi[i, i] = 1.0 / (al * self.t_ref ** al)
                phi[i, a] = -d0 * (1.0 / al + lt)
                phi[o, i] = -1.0 / al
                phi[o, a] = u[i] / al**2
                phi[o, o] = 1.0
        return phi

    def internal_bounds(self, lb, ub) -> tuple[np.ndarray, np.ndarray]:
        """The box the solver keeps: the exponents' own bounds; slope and level free
        (the user's bounds on the amplitude and offset are checked in user coordinates)."""
        lo, hi = np.array(lb, np.float64), np.array(ub, np.float64)
        for i, _, o in self.triples:
            lo[[i, o]], hi[[i, o]] = -np.inf, np.inf
        return lo, hi

    def held_triples(self, lb) -> tuple[tuple[int, int, int], ...]:
        """The triples whose amplitude has a nonnegative lower bound (D0 >= 0)."""
        return tuple(t for t in self.triples if lb[t[0]] >= 0)

    @staticmethod
    def quadrant(i: int, a: int, side: int, lb, ub) -> dict[int, tuple[float, float]]:
        """Bounds on slope (i) and exponent (a) that keep amplitude >= 0 with J increasing
        (side +1) or decreasing (-1); empty where the exponent's bounds exclude that side."""
        if side > 0:
            lo = max(EDGE_ALPHA, float(lb[a]))
            return {i: (0.0, math.inf), a: (lo, float(ub[a]))} if lo < ub[a] else {}
        hi = min(-EDGE_ALPHA, float(ub[a]))
        return {i: (-math.inf, 0.0), a: (float(lb[a]), hi)} if lb[a] < hi else {}

    @staticmethod
    def start_side(u, i: int, a: int, first_step) -> int:
        """The quadrant for a start at internal u: J's trend there (the slope's sign, which
        alpha's nudge off 0 leaves as it was); where J is flat (a plain start: alpha = 0
        or D0 = 0) the side the solver's first step ``first_step`` moves the slope to."""
        move = u[i] if u[i] != 0 else first_step[i]
        return -1 if move < 0 else 1

    @staticmethod
    def into_quadrant(u, held: dict[int, tuple[float, float]], alphas) -> np.ndarray:
        """u clipped into the held bounds; an exponent moved to the other side of 0 starts
        at +-START_ALPHA (where the slope is ~0, the same J) rather than on its limit."""
        u = np.array(u, np.float64)
        for k, (lo, hi) in held.items():
            if k in alphas and not lo <= u[k] <= hi:
                u[k] = float(np.clip(math.copysign(START_ALPHA, lo + hi), lo, hi)) \
                    if math.isfinite(lo + hi) else (lo if math.isfinite(lo) else hi)
            u[k] = float(np.clip(u[k], lo, hi))
        return u

    def into_box(self, x, lb, ub, toward_edge=()) -> np.ndarray:
        """x with each amplitude outside [lb, ub] moved onto its bound at the same level and
        slope (alpha re-solved; near the logarithmic edge only alpha and the offset change),
        then clipped into the box. Exponents in ``toward_edge`` (held at +-EDGE_ALPHA) are
        moved on to the edge as far as the box allows: their amplitude to its upper bound
        (or slope / 1e-9 where it has none)."""
        x = np.array(x, np.float64)
        u = self.to_internal(x)
        for i, a, o in self.triples:
            target = float(np.clip(x[i], lb[i], ub[i]))
            if a in toward_edge:
                target = float(ub[i]) if np.isfinite(ub[i]) else abs(u[i]) * 1e9
            if target == x[i] or target == 0 or u[i] == 0:
                continue
            al = float(u[a])
            with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
                for _ in range(100):  # slope = alpha target t_r^alpha: contracts for small alpha
                    al_new = float(u[i] / (target * self.t_ref ** al))
                    if not abs(al_new - al) > 1e-15 * abs(al):
                        break
                    al = al_new
            if np.isfinite(al) and lb[a] <= al <= ub[a] and al != 0:
                x[i], x[a], x[o] = target, al, u[o] - u[i] / al
        for i, a, o in self.triples:
            if not lb[o] <= x[o] <= ub[o]:
                on_bound = self._offset_on_bound(u, (i, a, o), lb, ub, x[o])
                if on_bound is not None:
                    x[i], x[a], x[o] = on_bound
        return np.clip(x, lb, ub)

    def _offset_on_bound(self, u, triple, lb, ub, offset) -> tuple | None:
        """(amplitude, exponent, offset) with the offset on the bound it crossed and the
        same level and slope (amplitude t_r^alpha = level - bound, alpha = slope / that),
        exact; None where the amplitude or exponent that needs is outside its bounds.
        Clipping the offset alone would move J by the whole excess at every time."""
        i, a, o = triple
        bound = float(np.clip(offset, lb[o], ub[o]))
        rest = float(u[o]) - bound  # amplitude * t_r^alpha
        if rest == 0 or u[i] == 0:
            return None
        al = float(u[i]) / rest
        with np.errstate(over="ignore", invalid="ignore"):
            amp = float(rest / self.t_ref ** al)
        if not (np.isfinite(amp) and lb[a] <= al <= ub[a] and lb[i] <= amp <= ub[i]):
            return None
        return amp, al, bound

    def evaluator(self, evaluate):
        """``evaluate`` (user vector -> normal equations) as a function of u."""
        def evaluate_internal(u):
            ne = evaluate(self.to_user(u))
            phi = self.jacobian(u)
            with np.errstate(all="ignore"):
                return NormalEquations(ne.cost, phi.T @ ne.H @ phi, phi.T @ ne.g, ne.n)
        return evaluate_internal


class SolverSpace:
    """The vector the solver iterates on: the free entries of the internal full vector
    (``coords``) or of the user's (``coords`` None), with its box and the way back."""

    def __init__(self, coords: PowerLawCoordinates | None, x0, lb, ub,
                 held: dict[int, tuple[float, float]] | None = None, u0=None):
        self.coords = coords
        if coords is None:
            u0, ulb, uub = x0, lb, ub
        else:
            ulb, uub = coords.internal_bounds(lb, ub)
            if u0 is None:
                u0 = coords.to_internal(x0)
                for _, a, _ in coords.triples:
                    nudged = math.copysign(START_ALPHA, u0[a])
                    if abs(u0[a]) < START_ALPHA and ulb[a] <= nudged <= uub[a]:
                        u0[a] = nudged
            for k, (lo, hi) in (held or {}).items():
                ulb[k], uub[k] = lo, hi
        self.free = FreeSubspace.from_bounds(u0, ulb, uub)
        self.start = self.free.reduce(u0)
        self.bounds = (self.free.reduce(ulb), self.free.reduce(uub))

    def user(self, v) -> np.ndarray:
        """The user's full vector for solver vector v."""
        u = self.free.expand(v)
        return u if self.coords is None else self.coords.to_user(u)

    def evaluator(self, evaluate):
        """``evaluate`` (user full vector -> normal equations) on solver vectors."""
        inner = evaluate if self.coords is None else self.coords.evaluator(evaluate)
        solver_evaluate = self.free.evaluator(inner)
        solver_evaluate.user = self.user  # messages name the user's parameters, not u
        return solver_evaluate

    def state_in_user(self, st, free: FreeSubspace):
        """``st`` with x and the normal equations in the user's free coordinates
        (``free``: same free set, as a triple with a fixed member is never mapped)."""
        if self.coords is None:
            return st
        u = self.free.expand(st.x)
        f = free.free
        inv = np.linalg.inv(self.coords.jacobian(u)[np.ix_(f, f)])
        ne = st.ne
        st.x = free.reduce(self.coords.to_user(u))
        st.ne = NormalEquations(ne.cost, inv.T @ ne.H @ inv, inv.T @ ne.g, ne.n)
        return st
