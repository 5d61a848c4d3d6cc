"""APS 8-ID-I aging series: the one-time limit of the two-time model fitted jointly.

For tau << t_age the two-time model reduces to

    g2(q, tau; t_age) = offset_q + contrast_q · exp(-q² ∫_{t_age}^{t_age+tau} J(t) dt),
    J(t) = D0 t^alpha + D_offset,

with the integral in closed form. All ages and q bins are fitted at once with the
measured errors (one contrast and offset per q bin, shared by the ages), giving the
aging law J(t). Ages: each file averages repeats taken between its start time and the
next file's, so its age is the midpoint of that window, counted from the first file's
start (the last file's window is taken as long as the one before it).

Independent check: per age and q, a free single-exponential fit gives a rate Gamma;
q² scaling means Gamma = J(t_age) q² (log-log slope 2). The authors describe these
g2 with two stretched modes; a single mode shows systematic residuals, reported here.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from homodyne.config import ConfigError
from homodyne.data.errors import DataFileError
from homodyne.data.multitau import read_multitau, scatter_ratio
from homodyne.jaxconf import jax, jnp
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.nlsq_wrapper import NLSQWrapper
from homodyne.optimization.settings import MAX_AGE_S
from homodyne.output import MARKER, committed_set, write_json
from homodyne.plots import warnings_at_debug

log = logging.getLogger("homodyne")


MAX_SERIES_SPAN_S = 30 * 86400.0  # an aging series measured within a month
PLOTS = ("q2_scaling.png", "g2_fits_and_residuals.png", "aging_law.png")
# every file of the result set, committed together (output.committed_set)
AGING_FILES = ("per_age.csv", "per_age_q_rates.csv", "points.csv.gz", *PLOTS, MARKER)


def check_start_times(data) -> None:
    """Start times (sorted) that make an aging series: within MAX_SERIES_SPAN_S of the
    series' median start (a wrong date in one file would set every age; name that file)."""
    try:
        t = np.array([d.start_time.timestamp() for d in data])
    except (OverflowError, ValueError, OSError):
        t = None
    if t is None or len({d.start_time.tzinfo is None for d in data}) > 1:
        raise DataFileError(data[0].path, "the files' /entry/start_time cannot be compared "
                                          "(time zones mixed or out of range); give "
                                          "one_time.ages_s")
    for a, b in zip(data, data[1:], strict=False):  # sorted: equal ones are neighbours
        if a.start_time == b.start_time:  # ages 0 and 0: the model of age 0 overflows
            raise DataFileError(b.path, f"starts at the same time as {a.path} "
                                        f"(/entry/start_time = {a.start_time}): one "
                                        "measurement twice (a copy or a link)? list each file "
                                        "of the aging series once, or give one_time.ages_s")
    far = np.abs(t - np.median(t))
    worst = int(np.argmax(far))
    if far[worst] > MAX_SERIES_SPAN_S:
        raise DataFileError(data[worst].path,
                            f"/entry/start_time = {data[worst].start_time} is "
                            f"{far[worst] / 86400:.4g} days from the series' median start "
                            f"({len(data)} files); an aging series spans at most "
                            f"{MAX_SERIES_SPAN_S / 86400:.0f} days: fix that file's start "
                            "time, or give one_time.ages_s")


def load_series(paths, ages_s=None) -> tuple[list, np.ndarray]:
    """Files sorted by start time and their ages [s], each logged with its source.

    ``ages_s`` (one per file, in the order given) come from the config; otherwise each
    age is the midpoint of the file's window from its start time (metadata) to the next
    file's, counted from the first file's start (the last window as long as the one
    before). A single file has no such window: its age must be given."""
    files = [read_multitau(p) for p in paths]
    if ages_s is not None:
        ages_s = np.asarray(ages_s, float).ravel()
        if ages_s.size != len(files) or not np.all((ages_s > 0) & (ages_s <= MAX_AGE_S)):
            raise ValueError(f"ages_s: need one age in (0, {MAX_AGE_S:g}] s per file "
                             f"({len(files)} files), got {ages_s.tolist()}")
        order = np.argsort(ages_s, kind="stable")
        data, ages = [files[i] for i in order], ages_s[order]
        source = "given (ages_s)"
    elif len(files) < 2:
        raise ValueError("the age of a single file cannot be taken from its metadata (it "
                         "has a start time but no reference or window); pass ages_s=[age in "
                         "seconds] or fit the whole series")
    else:
        data = sorted(files, key=lambda d: d.start_time)
        check_start_times(data)
        starts = np.array([(d.start_time - data[0].start_time).total_seconds() for d in data])
        ends = np.append(starts[1:], starts[-1] + (starts[-1] - starts[-2]))
        ages = 0.5 * (starts + ends)
        source = "from /entry/start_time (window midpoints after the first start)"
    for d, age in zip(data, ages, strict=True):
        log.info("age %.6g s for %s, %s", age, Path(d.path).name, source)
    return data, ages


def integral_J(age, tau, D0, alpha, D_offset):
    """∫_age^{age+tau} (D0 t^alpha + D_offset) dt, stable for tau << age and alpha -> -1."""
    a1 = alpha + 1.0
    u = jnp.log1p(tau / age)
    # expm1(a1 u) / a1 stays accurate for tiny a1; only a1 == 0 needs the limit u
    zero = a1 == 0.0
    safe = jnp.where(zero, 1.0, a1)
    power = age**a1 * jnp.expm1(safe * u) / safe
    return D0 * jnp.where(zero, u, power) + D_offset * tau






def table(data, ages, min_tau_s, max_tau_s, error_model="scatter") -> pd.DataFrame:
    """Long table of usable points: age, q, tau, g2, reported and effective errors.

    error_model "scatter": each file's errors are multiplied by its scatter ratio
    (never below 1); "measured": the errors as stored in the files.
    """
    rows = []
    for i, (d, age) in enumerate(zip(data, ages, strict=True)):
        tt, qq = np.meshgrid(d.tau, np.arange(d.q.size), indexing="ij")
        ok = (d.g2_err > 0) & np.isfinite(d.g2) & np.isfinite(d.g2_err) & (d.g2 != 0) & \
            (tt <= max_tau_s) & (tt >= min_tau_s)
        ratio = scatter_ratio(d, ok) if ok.any() else float("nan")  # (no point: no warning)
        scale = max(1.0, ratio) if error_model == "scatter" else 1.0
        rows.append(pd.DataFrame({"file": i, "age": age, "q_idx": qq[ok], "q": d.q[qq[ok]],
                                  "tau": tt[ok], "g2": d.g2[ok], "err_reported": d.g2_err[ok],
                                  "err": d.g2_err[ok] * scale, "scatter_ratio": ratio}))
    return pd.concat(rows, ignore_index=True)


def per_age_rates(tab: pd.DataFrame) -> pd.DataFrame:
    """Free single-exponential fits per (age, q): offset + contrast exp(-Gamma tau)."""
    out = []
    for (f, qi), g in tab.groupby(["file", "q_idx"]):
        tau, y, s = g["tau"].to_numpy(), g["g2"].to_numpy(), g["err"].to_numpy()
        base = float(np.median(y[-5:]))
        c0 = max(float(np.median(y[:5])) - base, 1e-3)
        half = tau[np.argmin(np.abs(y - (base + c0 / 2)))]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, cov = curve_fit(lambda t, o, c, G: o + c * np.exp(-G * t), tau, y,
                                   p0=[base, c0, np.log(2) / max(half, 1e-4)], sigma=s,
                                   absolute_sigma=False, bounds=([0.5, 0, 0], [2, 2, 1e5]),
                                   max_nfev=2000)
            err = float(np.sqrt(cov[2, 2]))
        except (RuntimeError, ValueError):
            continue
        out.append({"file": f, "age": g["age"].iloc[0], "q_idx": qi, "q": g["q"].iloc[0],
                    "gamma": p[2], "gamma_err": err, "contrast": p[1]})
    df = pd.DataFrame(out)
    # keep rates the delay window resolves: decays neither before the first delays nor
    # after the last (Gamma tau_max > 1 and Gamma tau_min < 1), and determined to 30%
    tmin, tmax = tab["tau"].min(), tab["tau"].max()
    good = (df["gamma"] * tmax > 1) & (df["gamma"] * tmin < 1) & \
        (df["gamma_err"] < 0.3 * df["gamma"]) & (df["contrast"] > 0.01)
    return df[good].reset_index(drop=True)


def q_scaling(rates: pd.DataFrame) -> pd.DataFrame:
    """Per age: log-log slope of Gamma(q) (2 for diffusive scaling) and J = Gamma/q²."""
    rows = []
    for (f, age), g in rates.groupby(["file", "age"]):
        if len(g) < 3:
            continue
        x, y = np.log(g["q"]), np.log(g["gamma"])
        w = (g["gamma"] / g["gamma_err"]) ** 2
        A = np.vstack([np.ones_like(x), x]).T * np.sqrt(w.to_numpy())[:, None]
        coef, *_ = np.linalg.lstsq(A, y * np.sqrt(w), rcond=None)
        cov = np.linalg.inv(A.T @ A)
        resid = (y - coef[0] - coef[1] * x) * np.sqrt(w)
        scale = max(1.0, float(resid @ resid) / max(len(g) - 2, 1))
        J = g["gamma"] / g["q"] ** 2
        rows.append({"file": f, "age": age, "n_q": len(g), "slope": coef[1],
                     "slope_err": float(np.sqrt(cov[1, 1] * scale)),
                     "J_median": float(np.median(J))})
    return pd.DataFrame(rows)


def fit_aging(paths, out_dir, *, min_tau_s: float = 1e-3, max_tau_s: float | None = None,
              error_model: str = "scatter", max_iterations: int = 500, ages_s=None,
              nonnegative_J: bool = False, plots: bool = True, stage=None) -> dict:
    """Joint fit of the aging law over all files and q bins; writes the result set
    (its figures only with ``plots``) into ``out_dir``, all or nothing: a failure or a stop
    at any moment leaves the previous complete set there. ``stage(name)``: the path to
    write ``name`` to where the files belong to a caller's set (the one-time J-model's).

    ``max_tau_s`` None: the longest delay in the data. ``ages_s``: see load_series.
    ``nonnegative_J``: D_offset >= 0, so J(t) >= 0 everywhere; otherwise a J(t) < 0
    anywhere in the fitted window is flagged as unphysical in the summary."""
    settings = dict(min_tau_s=min_tau_s, max_tau_s=max_tau_s, error_model=error_model,
                    max_iterations=max_iterations, ages_s=ages_s, nonnegative_J=nonnegative_J,
                    plots=plots)
    if stage is not None:
        return _fit_aging(paths, stage, **settings)
    with committed_set(out_dir, AGING_FILES) as results:
        r = _fit_aging(paths, results.stage, **settings)
    return {**r, "files": results.committed}


def _fit_aging(paths, stage, *, min_tau_s, max_tau_s, error_model, max_iterations, ages_s,
               nonnegative_J, plots) -> dict:
    data, ages = load_series(paths, ages_s)
    if max_tau_s is None:
        max_tau_s = float(max(np.max(d.tau) for d in data))
        log.info("max_tau_s = %.6g s, the longest delay in the data", max_tau_s)
    tab = table(data, ages, min_tau_s, max_tau_s, error_model)
    if tab.empty:  # (else 'cannot convert float NaN to integer' from an empty table)
        lo = min(float(np.min(d.tau)) for d in data)
        hi = max(float(np.max(d.tau)) for d in data)
        raise ConfigError("max_tau_s", f"the delay window [{min_tau_s:g}, {max_tau_s:g}] s "
                          f"holds no usable point of the data (delays {lo:.3g} to {hi:.3g} "
                          "s); widen it (fits.aps_aging.max_tau_s in the workflow config, "
                          "one_time.min_tau_s / max_tau_s in a fit config)")
    # q bins with usable points only, re-indexed 0..n_q-1 (q_bin keeps the file's index)
    tab["q_bin"] = tab["q_idx"]
    tab["q_idx"] = np.unique(tab["q_bin"], return_inverse=True)[1]
    n_q = int(tab["q_idx"].max()) + 1
    rates = per_age_rates(tab)
    scaling = q_scaling(rates)
    J0 = float(np.median(scaling["J_median"])) if len(scaling) else 1e3
    t_mid = float(np.median(ages))

    def model(x, *p):
        p = jnp.stack(p)
        q_idx = x[0].astype(jnp.int64)
        con, off, phys = p[:n_q], p[n_q], p[n_q + 1 :]
        I = integral_J(x[3], x[2], phys[0], phys[1], phys[2])
        return off + con[q_idx] * jnp.exp(-x[1] ** 2 * I)

    x = np.vstack([tab["q_idx"], tab["q"], tab["tau"], tab["age"]]).astype(float)
    # the shared offset: started at the long-delay baseline, bounded only loosely so any
    # normalisation of g2 fits (not just g2 -> 1)
    base = float(np.median(tab.loc[tab["tau"] >= tab["tau"].quantile(0.9), "g2"]))
    spread = float(np.ptp(tab["g2"])) + abs(base)
    con0 = np.full(n_q, 0.1)
    for qi, g in tab.groupby("q_idx"):
        g = g.sort_values("tau")
        head = float(np.median(g["g2"].iloc[: max(3, len(g) // 10)]))
        con0[qi] = np.clip(head - base, 0.01, 0.9) if np.isfinite(head) else 0.1
    p0 = np.concatenate([con0, [base, J0 * t_mid**0.5, -0.5, 0.0]])
    lb = np.concatenate([np.zeros(n_q), [base - 10 * spread, 0.0, -0.99,
                                          0.0 if nonnegative_J else -1e7]])
    ub = np.concatenate([np.ones(n_q), [base + 10 * spread, 1e12, 2.0, 1e7]])
    bins = np.unique(tab["q_bin"])
    names = [f"contrast[q{b}]" for b in bins] + ["offset", "D0", "alpha", "D_offset"]
    w = NLSQWrapper(options=EngineOptions(max_iterations=max_iterations, coarse=False))
    result = w.fit(model, x, tab["g2"].to_numpy(), p0, (lb, ub), sigma=tab["err"].to_numpy(),
                   parameter_names=names)
    fitted = np.asarray(model(jnp.asarray(x), *result.parameters))
    tab["model"] = fitted
    tab["norm_resid"] = (tab["g2"] - fitted) / tab["err"]
    per_age = tab.groupby(["file", "age"]).apply(
        lambda g: pd.Series({
            "chi2_red": float((g["norm_resid"] ** 2).mean()),
            "chi2_red_reported_errors": float((((g["g2"] - g["model"]) / g["err_reported"])
                                               ** 2).mean()),
            "scatter_ratio": float(g["scatter_ratio"].iloc[0]),
            "mean_resid": float(g["norm_resid"].mean())}),
        include_groups=False).reset_index()
    # J(t) with its uncertainty at the ages, from pinv(JᵀJ)
    phys_idx = slice(n_q + 1, n_q + 4)

    def J_of(p, t):
        return p[phys_idx][0] * t ** p[phys_idx][1] + p[phys_idx][2]

    pj = jnp.asarray(result.parameters)
    J_age = np.asarray(J_of(pj, jnp.asarray(ages)))
    G = np.asarray(jax.jacfwd(J_of)(pj, jnp.asarray(ages)))
    J_err = np.sqrt(np.clip(np.diag(result.function_covariance(G)), 0, None))
    per_age["J_fit"] = J_age
    per_age["J_fit_err"] = J_err
    if len(scaling):
        per_age = per_age.merge(scaling, on=["file", "age"], how="left")
    per_age.to_csv(stage("per_age.csv"), index=False)
    rates.to_csv(stage("per_age_q_rates.csv"), index=False)
    tab.to_csv(stage("points.csv.gz"), index=False)
    if plots:
        _plots([stage(name) for name in PLOTS], tab, rates, per_age, result, ages, J_of)
    window = np.geomspace(ages.min(), ages.max() + max_tau_s, 400)
    J_window = np.asarray(J_of(pj, jnp.asarray(window)))
    J_negative = bool(np.any(J_window < 0))
    if J_negative:
        log.warning("unphysical: J(t) < 0 inside the fitted window (min %.3g at t = %.4g s); "
                    "g2 then rises at long delays. Refit with nonnegative_J=True or a shorter "
                    "max_tau_s", float(J_window.min()), float(window[np.argmin(J_window)]))
    summary = {
        "J_negative_in_window": J_negative, "nonnegative_J": nonnegative_J,
        "J_min_in_window": float(J_window.min()),
        "files": [str(d.path) for d in data], "ages_s": ages.tolist(), "min_tau_s": min_tau_s,
        "max_tau_s": max_tau_s, "error_model": error_model,
        "n_q": n_q, "per_age": per_age.to_dict(orient="records"),
        "q_scaling_slope_median": float(np.median(scaling["slope"])) if len(scaling) else None,
        "single_mode_note": "reduced chi2 well above 1 and structured residuals mean a single "
                            "stretched-free exponential decay does not describe these g2; the "
                            "authors used two stretched modes",
        **result.as_dict(),
    }
    write_json(stage(MARKER), summary)
    return {"result": result, "per_age": per_age, "rates": rates, "summary": summary}


@warnings_at_debug
def _plots(paths, tab, rates, per_age, result, ages, J_of):
    """The figures of PLOTS, to ``paths`` in that order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis")
    # q² scaling per age: free rates against q, lines Gamma = J(t_age) q² from the joint fit
    fig, ax = plt.subplots(figsize=(6.4, 4.4), constrained_layout=True)
    for i, age in enumerate(ages):
        c = cmap(i / max(len(ages) - 1, 1))
        g = rates[rates["file"] == i]
        ax.errorbar(g["q"], g["gamma"], g["gamma_err"], fmt="o", ms=3, color=c,
                    label=f"{age / 60:.0f} min")
        qq = np.linspace(tab["q"].min(), tab["q"].max(), 50)
        ax.plot(qq, float(per_age.loc[per_age["file"] == i, "J_fit"].iloc[0]) * qq**2, "-",
                color=c, lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("q [1/Å]")
    ax.set_ylabel("Gamma [1/s]")
    ax.set_title("free per-age rates vs the joint fit's J(t_age) q²")
    ax.legend(fontsize=6, ncol=2)
    fig.savefig(paths[0], dpi=100)
    plt.close(fig)
    # data, model, normalised residuals for three q bins at every age
    qsel = sorted(tab["q_idx"].unique())
    qsel = [qsel[len(qsel) // 6], qsel[len(qsel) // 2], qsel[(5 * len(qsel)) // 6]]
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5), constrained_layout=True,
                             sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    for j, qi in enumerate(qsel):
        for i in range(len(ages)):
            g = tab[(tab["q_idx"] == qi) & (tab["file"] == i)]
            c = cmap(i / max(len(ages) - 1, 1))
            axes[0, j].errorbar(g["tau"], g["g2"], g["err"], fmt=".", ms=2, color=c, lw=0.5)
            axes[0, j].plot(g["tau"], g["model"], "-", color=c, lw=1)
            axes[1, j].plot(g["tau"], g["norm_resid"], ".-", ms=2, lw=0.5, color=c)
        axes[0, j].set_title(f"q = {tab.loc[tab['q_idx'] == qi, 'q'].iloc[0]:.4f} 1/Å")
        axes[1, j].axhline(0, color="k", lw=0.5)
        axes[1, j].set_xscale("log")
        axes[1, j].set_xlabel("tau [s]")
    axes[0, 0].set_ylabel("g2")
    axes[1, 0].set_ylabel("(data - fit) / err")
    fig.savefig(paths[1], dpi=90)
    plt.close(fig)
    # the aging law
    fig, ax = plt.subplots(figsize=(6.0, 4.0), constrained_layout=True)
    t = np.linspace(ages.min() * 0.8, ages.max() * 1.1, 200)
    ax.plot(t / 60, np.asarray(J_of(jnp.asarray(result.parameters), jnp.asarray(t))), "C0-",
            label="J(t) = D0 t^alpha + D_offset (joint fit)")
    ax.errorbar(per_age["age"] / 60, per_age["J_fit"], per_age["J_fit_err"], fmt="C0o", ms=3)
    if "J_median" in per_age:
        ax.plot(per_age["age"] / 60, per_age["J_median"], "C3s", ms=4,
                label="median Gamma/q² of free per-age fits")
    ax.set_xlabel("age [min]")
    ax.set_ylabel("J [Å²/s]")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.savefig(paths[2], dpi=100)
    plt.close(fig)
