"""Geodesic acceleration (Transtrum & Sethna 2012) for two-time fits, opt-in.

The LM step v is corrected by ½ a, a = -(JᵀJ + λD²)⁻¹ Jᵀ r''_v, where r''_v is the
residuals' second directional derivative along v. r''_v needs v, and v needs the
normal equations of the point, so it cannot share that point's pass; it costs one
more pass over the data per trial step (a directional pass: the model at three points
and one reverse-mode product per batch, no JᵀJ). An accepted step therefore costs two
passes instead of one.

r''_v is taken in the solver's own coordinates (internal power-law coordinates, the
free subspace) by the central second difference of the model along v at
x ± h v, h = ``FD_STEP``, in float64 whatever the model's dtype (a float32 difference
would be rounding); Jᵀ is the user-coordinate Jacobian carried to the solver's by
the map's Jacobian. EngineOptions.geodesic_acceleration switches it on
(``optimization.geodesic_acceleration`` in the config); off by default.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np

from homodyne.jaxconf import jax, jnp
from homodyne.model import c2_points, point_coordinates
from homodyne.optimization.problems import (
    ChunkLayout,
    NormalEquations,
    _scan_batches,
    _validity,
)

# the second difference's step, as a fraction of v: its truncation error is ~h² of
# r''_v's size, its rounding ~eps64 / (h² |r''_v|), both small for h = 1e-2
FD_STEP = 1e-2


@functools.lru_cache(maxsize=16)
def _directional_fn(spec, validate: bool, layout: ChunkLayout, h: float):
    """Jitted (three user vectors stacked, ctx, columns, ...) -> sums of one call:
    q = Σ w² J_m m''_v (J_m at the middle vector), rq = Σ r r''_v, cost, counts."""
    B, p = layout.batch_size, spec.n_params

    def batch_stats(params, ctx, cols, g0, n_left):
        valid = _validity(cols, B, n_left, validate and not layout.finite)
        g = jnp.minimum(g0 + layout.stride * jnp.arange(B), spec.n_points - 1)
        in_band = jnp.zeros((), jnp.int64)
        if spec.exclude_diagonal_frames > 1:
            _, i, j = point_coordinates(g, spec)
            kept = spec.band_mask(i, j)
            in_band = jnp.sum((valid & ~kept).astype(jnp.int64))
            valid = valid & kept
        w = valid.astype(jnp.float64)
        if "w" in cols:
            w = w * jnp.where(valid, cols["w"], 0.0)
        three = params.reshape(3, p)

        def model(theta):
            return c2_points(theta, g, spec)

        m0, pullback = jax.vjp(model, three[1])
        m2 = (model(three[0]) - 2.0 * m0 + model(three[2])) / (h * h)
        m2 = jnp.where(valid, m2, 0.0)
        r = jnp.where(valid, cols["y"].astype(jnp.float64) - m0, 0.0) * w
        (q,) = pullback(w * w * m2)
        return dict(cost=jnp.sum(r * r), n=jnp.sum(valid.astype(jnp.int64)), n_band=in_band,
                    q=q, rq=-jnp.sum(r * w * m2))

    return _scan_batches(batch_stats, functools.partial(_zero_sums, p), layout, validate)


def _zero_sums(p: int) -> dict:
    """A directional pass's running sums, zero."""
    f = jnp.float64
    return dict(cost=jnp.zeros((), f), n=jnp.zeros((), jnp.int64),
                n_band=jnp.zeros((), jnp.int64), q=jnp.zeros((p,), f), rq=jnp.zeros((), f))


class DirectionalProblem:
    """A pass problem over a two-time problem's data whose sums are Jᵀ r''_v: its
    'parameters' are the three user vectors x - h v, x, x + h v stacked (reversed
    order does not matter: the second difference is symmetric)."""

    def __init__(self, problem, h: float = FD_STEP):
        self.spec = dataclasses.replace(problem.spec, dtype="float64")
        self.validate = bool(getattr(problem, "validate", True))
        self.h = h
        self.n_params = problem.n_params
        self.parameter_names = problem.parameter_names

    def prepare(self, params):
        return jnp.zeros(())

    def chunk_fn(self, layout: ChunkLayout):
        return _directional_fn(self.spec, self.validate, layout, self.h)

    def zero_stats(self, layout: ChunkLayout):
        return _zero_sums(self.n_params)

    def assemble(self, stats) -> NormalEquations:
        """cost: ½ Σ r² at x; g: Jᵀ r''_v (user coordinates); H: unused (empty)."""
        return NormalEquations(0.5 * float(stats["cost"]), np.zeros((0, 0)),
                               np.asarray(stats["q"], np.float64), int(stats["n"]))


def supports(problem) -> bool:
    """Geodesic acceleration is built for the two-time model (a ``ModelSpec``)."""
    return getattr(problem, "spec", None) is not None


def geodesic_pass(runner_factory: Callable, problem, user: Callable, solver_jacobian: Callable,
                  h: float = FD_STEP):
    """``geodesic(x, v)`` for ``solve_lm``: one directional pass (``runner_factory``
    builds a PassRunner over the DirectionalProblem) at the user points of the solver
    points x and x +- h v (``user``), Jᵀ r''_v carried to the solver's coordinates by
    ``solver_jacobian(x)`` (d user / d solver, full x free). None where it failed."""
    runner = runner_factory(DirectionalProblem(problem, h))

    def geodesic(x, v):
        x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
        points = np.concatenate([user(x + h * v), user(x), user(x - h * v)])
        ne = runner.evaluate(points)
        if not np.isfinite(ne.cost):
            return None
        return solver_jacobian(x).T @ ne.g

    return geodesic


def space_maps(space) -> tuple[Callable, Callable]:
    """(solver vector -> user full vector, its Jacobian full x free) of a driver's
    ``SolverSpace`` (internal coordinates or none) or ``FreeSubspace``."""
    free = space.free
    if isinstance(free, np.ndarray):  # a FreeSubspace: the user's own coordinates
        eye = np.eye(free.size)[:, free]
        return space.expand, lambda x: eye
    coords, sub = space.coords, space.free

    def jacobian(x):
        u = sub.expand(x)
        full = np.eye(u.size) if coords is None else coords.jacobian(u)
        return full[:, sub.free]

    return space.user, jacobian
