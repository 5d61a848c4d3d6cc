"""The NSLS-II CHX two-time matrix: a direct static fit, compared with the authors' rates.

Units: the matrix carries no q or frame time, so the fit uses dt = 1 frame and q = 1;
D0 and D_offset then come out in 1/frame and q²·J(t) = J(t) is the decay rate of
c2 - offset per frame at age t. The authors fitted one-time cuts per age with
g2 = ginf + beta exp(-2 (gamma tau)^alpha); where their alpha is near 1 their rate is
2·gamma, which is compared with J(t_age). Age bin centre c (0-based frames) is frame
time t = c + 0.5 in our 1-based convention (frame k at t = k dt).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from homodyne.data import open_two_time
from homodyne.jaxconf import jax, jnp
from homodyne.model import transport_coefficient
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.output import MARKER, committed_set, write_json
from homodyne.pipeline import estimate_scaling, write_two_time_outputs

# a plain start (J flat): the engine's start estimate (optimization/start_estimate.py)
# finds J(t) from the data; from the old trend start [0.2, -0.5, 0] the fit ended at the
# logarithmic edge, 0.0083 in cost above the minimum inside the bounds
START = [1e-3, 0.0, 0.0]
LOWER = [1e-6, -2.0, -1e3]
UPPER = [1e3, 2.0, 1e3]
# every file of the result set, committed together (output.committed_set)
CHX_FILES = ("comparison.csv", "rate_vs_age.png", "fit.h5", "c2_heatmaps.png", "c2_cuts.png",
             "scaling_per_angle.png", "residual_histogram.png", MARKER)


def authors_rates(results_json, alpha_window=(0.85, 1.15)) -> pd.DataFrame:
    """The authors' per-age fits where alpha is in the window and gamma is determined."""
    d = json.loads(Path(results_json).read_text())["1"]
    p, e = d["parameters"], d["parameters_errors"]
    df = pd.DataFrame({
        "age_bin": np.asarray(d["ages"]["bin_centers"], float),
        "gamma": np.asarray(p["gamma"], float), "gamma_err": np.asarray(e["gamma"], float),
        "alpha": np.asarray(p["alpha"], float), "beta": np.asarray(p["beta"], float),
    })
    lo, hi = check_alpha_window(alpha_window)
    ok = df["alpha"].between(lo, hi) & np.isfinite(df["gamma"]) & \
        np.isfinite(df["gamma_err"]) & (df["gamma_err"] > 0) & (df["gamma_err"] < df["gamma"])
    df = df[ok].copy()
    df["t_frames"] = df["age_bin"] + 0.5
    df["two_gamma"] = 2 * df["gamma"]
    df["two_gamma_err"] = 2 * df["gamma_err"]
    return df.reset_index(drop=True)


def rate_with_errors(result, spec, t) -> tuple[np.ndarray, np.ndarray]:
    """q²·|J(t)| and its standard error, propagated through pinv(JᵀJ) (finite even when
    D0 and D_offset are individually undetermined); c2 depends on |∫J| only, so a fit
    with J < 0 over the data is the rate -q²·J."""
    k = spec.n_scaling_sets
    q2 = spec.q**2

    def rate(params):
        phys = params[2 * k :]
        return q2 * jnp.abs(transport_coefficient(jnp.asarray(t), phys[0], phys[1], phys[2]))

    p = jnp.asarray(result.parameters)
    values = np.asarray(rate(p))
    grads = np.asarray(jax.jacfwd(rate)(p))
    cov = result.function_covariance(grads)
    return values, np.sqrt(np.clip(np.diag(cov), 0, None))


def check_alpha_window(alpha_window) -> tuple[float, float]:
    """(low, high) of the alpha window, or a ValueError naming the fix (a reversed window
    selects no age at all)."""
    try:
        lo, hi = (float(v) for v in alpha_window)
    except (TypeError, ValueError):  # not two numbers: one, three, text
        raise ValueError(f"fits.chx.alpha_window: {alpha_window!r} is not [low, high], two "
                         "numbers; give e.g. [0.85, 1.15]") from None
    if not lo < hi:
        raise ValueError(f"fits.chx.alpha_window: [{lo:g}, {hi:g}] is not [low, high] with "
                         "low < high; give e.g. [0.85, 1.15]")
    return lo, hi


def fit_chx(npy_path, results_json, out_dir, *, alpha_window=(0.85, 1.15),
            max_iterations: int = 300) -> dict:
    """Fit the CHX matrix and write its result set into ``out_dir``, all or nothing: a
    failure or a stop at any moment leaves the previous complete set there."""
    alpha_window = check_alpha_window(alpha_window)
    with committed_set(out_dir, CHX_FILES) as results:
        r = _fit_chx(npy_path, results_json, results.stage, alpha_window, max_iterations)
    return {**r, "files": results.committed}


def _fit_chx(npy_path, results_json, stage, alpha_window, max_iterations) -> dict:
    with open_two_time(npy_path, q=1.0) as src:  # closed also where the fit raises
        spec = src.model_spec(mode="static", dt=1.0, scaling="shared")
        con, off = estimate_scaling(src, 0)
        p0 = spec.pack(max(con, 0.01), off, START)
        lb = spec.pack(0.0, 0.5, LOWER)
        ub = spec.pack(1.0, 1.5, UPPER)
        w = NLSQWrapper(options=EngineOptions(max_iterations=max_iterations))
        result = w.fit_two_time(src, spec, p0, (lb, ub))
        authors = authors_rates(results_json, alpha_window)
        rate, rate_err = rate_with_errors(result, spec, authors["t_frames"].to_numpy())
        authors["rate_fit"] = rate
        authors["rate_fit_err"] = rate_err
        authors["z"] = (rate - authors["two_gamma"]) / np.hypot(rate_err, authors["two_gamma_err"])
        authors.to_csv(stage("comparison.csv"), index=False)
        t_grid = np.linspace(1, spec.n_frames, 200)
        band, band_err = rate_with_errors(result, spec, t_grid)
        _plot(stage("rate_vs_age.png"), t_grid, band, band_err, authors)
        write_two_time_outputs(None, src, spec, result, title="CHX two-time (frame units)",
                               stage=stage)
        summary = {
            "data": str(npy_path), "units": "dt = 1 frame, q = 1: rates in 1/frame",
            "n_compared": int(len(authors)), "alpha_window": list(alpha_window),
            "median_abs_z": float(np.median(np.abs(authors["z"]))) if len(authors) else None,
            "fraction_within_2_sigma": float(np.mean(np.abs(authors["z"]) < 2))
            if len(authors) else None,
            "rate_at_first_and_last_frame": [float(band[0]), float(band[-1])],
            "rate_err_at_first_and_last_frame": [float(band_err[0]), float(band_err[-1])],
            **result.as_dict(),
        }
        write_json(stage(MARKER), summary)
    return {"result": result, "comparison": authors, "summary": summary}


def _plot(path, t, band, err, authors):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    ax.plot(t, band, "C0-", label="this fit: q²·|J(t)| (two-time, all ages)")
    ax.fill_between(t, band - err, band + err, color="C0", alpha=0.3)
    ax.errorbar(authors["t_frames"], authors["two_gamma"], authors["two_gamma_err"], fmt="o",
                color="C3", ms=4, label="authors: 2·gamma (one-time cuts, alpha ≈ 1)")
    ax.set_xlabel("age t [frames]")
    ax.set_ylabel("decay rate [1/frame]")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
