"""One-time figures: g2 data, model and normalised residuals per q; Gamma against q."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from homodyne.plots import _pyplot, warnings_at_debug


@warnings_at_debug
def plot_g2_fits(path, fits, *, title="", ncols: int = 4) -> Path:
    """One panel pair per q: g2 with errors and the model above, (data - fit)/sigma below."""
    from homodyne.onetime.fit import g2_model

    plt = _pyplot()
    n = max(len(fits), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = plt.figure(figsize=(3.6 * ncols, 3.4 * nrows), constrained_layout=True)
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[2, 1] * nrows)
    for k, f in enumerate(fits):
        r, c = divmod(k, ncols)
        top = fig.add_subplot(grid[2 * r, c])
        bottom = fig.add_subplot(grid[2 * r + 1, c], sharex=top)
        model = np.asarray(g2_model(f.tau, *f.result.parameters))
        top.errorbar(f.tau, f.g2, f.sigma, fmt=".", ms=3, lw=0.5, color="C0")
        tt = np.geomspace(f.tau.min(), f.tau.max(), 200)
        top.plot(tt, np.asarray(g2_model(tt, *f.result.parameters)), "C3-", lw=1)
        status = "" if f.result.status == "converged" else f" [{f.result.status}]"
        top.set_title(f"q = {f.q:.4g} 1/Å{status}", fontsize=8)
        top.set_xscale("log")
        bottom.plot(f.tau, (f.g2 - model) / f.sigma, ".-", ms=2, lw=0.5, color="C0")
        bottom.axhline(0, color="k", lw=0.5)
        bottom.set_xlabel("tau [s]", fontsize=8)
        if c == 0:
            top.set_ylabel("g2")
            bottom.set_ylabel("(data - fit)/sigma", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)
    return Path(path)


@warnings_at_debug
def plot_rates(path, fits, resolved, power_law: dict, *, title="") -> Path:
    """Gamma against q on log axes: resolved rates with errors, the fitted power law and
    the q² line through the median Gamma/q²; unresolved rates as open markers."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.4), constrained_layout=True)
    ids = {id(f) for f in resolved}
    other = [f for f in fits if id(f) not in ids]
    if resolved:
        q = np.array([f.q for f in resolved])
        g = np.array([f.value("gamma") for f in resolved])
        e = np.array([f.error("gamma") for f in resolved])
        ax.errorbar(q, g, np.where(np.isfinite(e), e, 0), fmt="o", ms=4, color="C0",
                    label="fitted rates")
        qq = np.geomspace(q.min(), q.max(), 50)
        if power_law.get("exponent") is not None:
            ax.plot(qq, power_law["prefactor"] * qq ** power_law["exponent"], "C0-",
                    label=f"Gamma ∝ q^{power_law['exponent']:.2f}")
            ax.plot(qq, power_law["J_median"] * qq**2, "k--", lw=1, label="q² (diffusion)")
    if other:
        ax.plot([f.q for f in other], [f.value("gamma") for f in other], "o", mfc="none",
                color="0.5", ms=4, label="not resolved (bound/undetermined)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("q [1/Å]")
    ax.set_ylabel("Gamma [1/s]")
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=100, format="png")
    plt.close(fig)
    return Path(path)
