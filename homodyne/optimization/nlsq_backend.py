"""The nlsq peer: the same call routed to nlsq's optimisers, for comparison only.

nlsq is a core dependency (a lean pinned range) imported here, lazily, so that
``import homodyne`` stays light.
``curve_fit_large`` combines per-chunk fits and is not the exact optimum; the hybrid
streaming optimiser keeps the data in memory. Both are reported as they are.
"""

from __future__ import annotations

import time

import numpy as np

from homodyne.optimization.result import FitResult

METHODS = ("curve_fit", "curve_fit_large", "hybrid_streaming")


def nlsq_available() -> bool:
    try:
        import nlsq  # noqa: F401
    except ImportError:
        return False
    return True


def fit_with_nlsq(model_func, xdata, ydata, p0, lb, ub, *, method="curve_fit", sigma=None,
                  parameter_names=None, memory_limit_gb=None) -> FitResult:
    """Fit with nlsq and wrap the answer in a ``FitResult`` (uncertainties from pcov)."""
    try:
        import nlsq
    except ImportError as exc:
        raise ImportError("the nlsq backend needs nlsq, a core dependency: "
                          "pip install 'nlsq>=0.5.4,<0.6.8'") from exc
    if method not in METHODS:
        raise ValueError(f"nlsq method must be one of {METHODS}, got {method!r}")
    t0 = time.perf_counter()
    p0 = np.asarray(p0, float)
    xdata, ydata, sigma = _points_to_fit(xdata, ydata, sigma)
    out: object
    if method == "curve_fit":
        out = nlsq.curve_fit(model_func, xdata, ydata, p0=p0, bounds=(lb, ub), sigma=sigma,
                             method="trf")
    elif method == "curve_fit_large":
        # bounds as lists: below its size threshold curve_fit_large compares them with
        # (-inf, inf), which raises for arrays (nlsq 0.6.7)
        out = nlsq.curve_fit_large(model_func, xdata, ydata, p0=p0,
                                   bounds=(np.asarray(lb, float).tolist(),
                                           np.asarray(ub, float).tolist()),
                                   sigma=sigma, memory_limit_gb=memory_limit_gb)
    else:
        opt = nlsq.AdaptiveHybridStreamingOptimizer()
        out = opt.fit((xdata, ydata), model_func, p0, bounds=(lb, ub), sigma=sigma, verbose=0)
    popt, pcov = _unpack(out)
    resid = (np.asarray(ydata) - np.asarray(model_func(xdata, *popt)))
    if sigma is not None:
        resid = resid / np.asarray(sigma)
    n = int(np.isfinite(resid).sum())
    cost = 0.5 * float(np.nansum(resid**2))
    names = tuple(parameter_names or (f"p{i}" for i in range(p0.size)))
    return FitResult(
        parameter_names=names, parameters=popt, uncertainties=np.sqrt(np.abs(np.diag(pcov))),
        covariance=pcov, cost=cost, n_points=n, reduced_chi_squared=2 * cost / max(n - p0.size, 1),
        converged=False, stop_reason=f"nlsq {method} (its own status is not trusted here)",
        strategy=method, iterations=-1, passes=-1, wall_time_s=time.perf_counter() - t0,
        backend=f"nlsq-{nlsq.__version__}", generic_rules=True, sigma_given=sigma is not None)


def _points_to_fit(xdata, ydata, sigma):
    """The points the homodyne engine fits too: a NaN in ydata, or a NaN or infinite sigma
    (no information), leaves that point out, so that both backends count the same points
    and degrees of freedom."""
    y = np.asarray(ydata, float)
    keep = np.isfinite(y)
    if sigma is not None:
        s = np.broadcast_to(np.asarray(sigma, float), y.shape)
        keep &= np.isfinite(s)
        sigma = s[keep]
    if keep.all():
        return xdata, ydata, sigma
    return np.asarray(xdata)[..., keep], y[keep], sigma


def _unpack(out):
    if isinstance(out, dict):
        popt = out.get("x", out.get("popt"))
        pcov = out.get("pcov")
    elif isinstance(out, tuple):
        popt, pcov = out[0], out[1]
    else:
        popt, pcov = getattr(out, "popt", getattr(out, "x", None)), getattr(out, "pcov", None)
    popt = np.asarray(popt, float)
    pcov = np.full((popt.size, popt.size), np.nan) if pcov is None else np.asarray(pcov, float)
    return popt, pcov
