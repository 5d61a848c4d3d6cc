"""Figures: per-angle c2 heat maps of data, fit and residuals, and one-time cuts."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def residual_scale(res) -> float:
    """Symmetric colour limit of a residual panel: 99th percentile of |res| (NaN ignored)."""
    finite = np.abs(res[np.isfinite(res)])
    r = float(np.percentile(finite, 99)) if finite.size else 0.0
    return r if r > 0 else 1.0


def plot_heatmaps(path, *, times, phi_deg, data, model, title="") -> Path:
    """One row per angle: data, fit, residual (data - fit), sharing the colour scale."""
    plt = _pyplot()
    n = len(phi_deg)
    fig, axes = plt.subplots(n, 3, figsize=(11, 3.3 * n), squeeze=False, constrained_layout=True)
    ext = [times[0], times[-1], times[0], times[-1]]
    for a in range(n):
        # the diagonal (t1 = t2) is not fitted: leave it out of the colour scales
        off_diag = ~np.eye(data[a].shape[0], dtype=bool)
        lo, hi = np.nanpercentile(data[a][off_diag], [1, 99])
        res = np.where(off_diag, data[a] - model[a], np.nan)
        r = residual_scale(res)
        for ax, img, name, kw in (
            (axes[a, 0], data[a], "data", dict(vmin=lo, vmax=hi, cmap="viridis")),
            (axes[a, 1], model[a], "fit", dict(vmin=lo, vmax=hi, cmap="viridis")),
            (axes[a, 2], res, "residual", dict(vmin=-r, vmax=r, cmap="RdBu_r")),
        ):
            im = ax.imshow(img, origin="lower", extent=ext, **kw)
            ax.set_title(f"phi = {phi_deg[a]:g} deg: {name}")
            ax.set_xlabel("t2 [s]")
            ax.set_ylabel("t1 [s]")
            fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def plot_cuts(path, *, times, phi_deg, data, model, n_ages=4) -> Path:
    """One-time cuts c2(t_age, t_age + tau) at several ages, data as points, fit as lines."""
    plt = _pyplot()
    n = len(phi_deg)
    fig, axes = plt.subplots(1, n, figsize=(4.5 * n, 3.6), squeeze=False, constrained_layout=True)
    N = len(times)
    rows = np.unique(np.linspace(0, N - 2, n_ages + 1).astype(int)[:-1])
    for a in range(n):
        ax = axes[0, a]
        for i in rows:
            tau = times[i + 1 :] - times[i]
            (ln,) = ax.semilogx(tau, data[a, i, i + 1 :], ".", ms=2,
                                label=f"age {times[i]:.3g} s")
            ax.semilogx(tau, model[a, i, i + 1 :], "-", color=ln.get_color())
        ax.set_xlabel("tau [s]")
        ax.set_ylabel("c2")
        ax.set_title(f"phi = {phi_deg[a]:g} deg")
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
