"""Runs one fit: coarse stage on a subsample, full passes, then a filled ``FitResult``."""

from __future__ import annotations

import time

import numpy as np
import psutil

from homodyne.jaxconf import jax
from homodyne.optimization.engine import (
    EngineOptions,
    PassRunner,
    covariance_from_normal,
    solve_lm,
)
from homodyne.optimization.result import FitResult


def _lm_kwargs(opts: EngineOptions, coarse: bool) -> dict:
    return dict(
        max_iterations=opts.coarse_max_iterations if coarse else opts.max_iterations,
        step_tol_se=opts.coarse_step_tol_se if coarse else opts.step_tol_se,
        gtol=1e-3 if coarse else opts.gtol,
        ftol=opts.ftol,
    )


def run_fit(problem, data, x0, lb, ub, *, options: EngineOptions | None = None,
            strategy: str = "STANDARD", on_chunk=None, on_iteration=None) -> FitResult:
    """Fit ``problem`` on ``data`` from ``x0`` within [lb, ub]."""
    opts = options or EngineOptions()
    t0 = time.perf_counter()
    x0 = np.asarray(x0, dtype=np.float64)
    lb = np.broadcast_to(np.asarray(lb, dtype=np.float64), x0.shape).copy()
    ub = np.broadcast_to(np.asarray(ub, dtype=np.float64), x0.shape).copy()
    records: list = []
    x, lam = x0, opts.initial_damping
    coarse_passes = coarse_points = 0
    messages = []
    if opts.coarse and data.n_points > 2 * opts.coarse_points:
        sub = data.subsample(opts.coarse_points, opts.batch_size)
        coarse_points = sub.n_points
        runner = PassRunner(problem, sub, stage="coarse", records=records)
        st = solve_lm(runner.evaluate, x, lb, ub, initial_damping=lam, **_lm_kwargs(opts, True))
        coarse_passes = st.evaluations
        x = st.x  # the full stage starts with fresh damping
        messages.append(f"coarse stage on {coarse_points:,} points: {st.reason}")
    runner = PassRunner(problem, data, stage="full", on_chunk=on_chunk, records=records)
    st = solve_lm(runner.evaluate, x, lb, ub, initial_damping=lam, on_iteration=on_iteration,
                  **_lm_kwargs(opts, False))
    return build_result(problem, st, x0, lb, ub, strategy=strategy, records=records,
                        coarse_passes=coarse_passes, coarse_points=coarse_points,
                        batch_size=data.batch_size, t0=t0, messages=messages)


def build_result(problem, st, x0, lb, ub, *, strategy, records, coarse_passes, coarse_points,
                 batch_size, t0, messages) -> FitResult:
    ne = st.ne
    p = st.x.size
    dof = max(ne.n - p, 1)
    chi2r = 2.0 * ne.cost / dof
    span = np.where(np.isfinite(ub - lb), ub - lb, 1.0)
    on_bound = (st.x <= lb + 1e-9 * span) | (st.x >= ub - 1e-9 * span)
    cov = covariance_from_normal(ne.H, chi2r)
    undetermined = ~np.isfinite(np.diag(cov))
    names = tuple(problem.parameter_names)
    not_moved = np.abs(st.x - x0) <= 1e-12 * np.maximum(np.abs(x0), 1e-300)
    full = [r.seconds for r in records if r.stage == "full"]
    return FitResult(
        parameter_names=names,
        parameters=st.x.copy(),
        uncertainties=np.sqrt(np.abs(np.diag(cov))),
        covariance=cov,
        cost=ne.cost,
        n_points=ne.n,
        reduced_chi_squared=chi2r,
        converged=st.converged,
        stop_reason=st.reason,
        strategy=strategy,
        iterations=st.iteration,
        passes=len(full),
        coarse_passes=coarse_passes,
        coarse_points=coarse_points,
        batch_size=batch_size,
        at_bounds=[n for n, b in zip(names, on_bound, strict=True) if b],
        not_moved=[n for n, b in zip(names, not_moved, strict=True) if b],
        undetermined=[n for n, b in zip(names, undetermined, strict=True) if b],
        wall_time_s=time.perf_counter() - t0,
        pass_seconds=full,
        peak_rss_mb=_peak_rss_mb(),
        device=jax.devices()[0].platform,
        history=st.history,
        messages=messages,
    )


def _peak_rss_mb() -> float | None:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except (ImportError, OSError):
        return psutil.Process().memory_info().rss / 2**20
