"""Figures: per-angle c2 heat maps of data, fit and residuals, one-time cuts, per-angle
contrast/offset, and the residual histogram against the noise estimate."""

from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("homodyne")


def warnings_at_debug(func):
    """Run a figure function with the plotting library's warnings (log axes without a
    positive value, a legend without labels) logged at DEBUG: an odd figure is no news
    for the console, and the raw library text tells the user nothing to do."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                return func(*args, **kwargs)
            finally:
                for w in caught:
                    log.debug("%s: %s (%s)", func.__name__, w.message, w.category.__name__)

    return wrapper


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


@warnings_at_debug
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


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(columns, rows) of a grid of n panels at most ``max_cols`` wide."""
    cols = max(1, min(n, max_cols))
    return cols, max(1, -(-n // cols))


@warnings_at_debug
def plot_cuts(path, *, times, phi_deg, data, model, n_ages=4) -> Path:
    """One-time cuts c2(t_age, t_age + tau) at several ages, data as points, fit as lines;
    one panel per angle in a grid at most four wide."""
    plt = _pyplot()
    n = len(phi_deg)
    cols, rows = grid_shape(n)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False,
                             constrained_layout=True)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    N = len(times)
    ages = np.unique(np.linspace(0, N - 2, n_ages + 1).astype(int)[:-1])
    for a in range(n):
        ax = axes.flat[a]
        for i in ages:
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


@warnings_at_debug
def plot_scaling(path, *, phi_deg, contrast, contrast_se, offset, offset_se) -> Path:
    """Contrast and offset (± SE) against the angle: one value each when shared."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 3.2), constrained_layout=True)
    x = np.asarray(phi_deg, float) if len(contrast) == len(phi_deg) else None
    for ax, v, se, name in ((axes[0], contrast, contrast_se, "contrast"),
                            (axes[1], offset, offset_se, "offset")):
        v, se = np.asarray(v, float), np.asarray(se, float)
        if x is None:  # shared by every angle: one value across the range
            ax.axhline(v[0], color="C0", label=f"shared: {v[0]:.4g} ± {se[0]:.2g}")
            ax.axhspan(v[0] - se[0], v[0] + se[0], color="C0", alpha=0.2)
            ax.legend(fontsize=8)
        else:
            ax.errorbar(x, v, np.where(np.isfinite(se), se, 0), fmt="o", ms=4)
        ax.set_xlabel("phi [deg]")
        ax.set_title(f"{name} per angle (± SE)")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)


def noise_from_differences(data) -> float:
    """Noise sigma from the data alone: robust spread (MAD) of neighbour differences along
    t2 in the strict upper triangle, / sqrt(2); smooth c2 cancels, white noise does not."""
    d = np.diff(np.asarray(data, float), axis=-1)
    keep = np.triu(np.ones(d.shape[-2:], bool), 1)  # both neighbours above the diagonal
    vals = d[..., keep]
    vals = vals[np.isfinite(vals)]
    if vals.size < 2:
        return float("nan")
    return float(1.4826 * np.median(np.abs(vals - np.median(vals))) / np.sqrt(2))


# residuals whose rms is within this many float32 rounding errors of |c2| are the
# arithmetic's, not noise (noise-free data fitted exactly, stored in float32 or float64):
# no Gaussian of a noise estimate describes them
WORKING_PRECISION = 10 * float(np.finfo(np.float32).eps)
# the data's neighbour-difference spread within this factor of the fit's own (noise-free
# c2 differs between neighbouring frames too) is an upper bound on the noise, not a value
NOISE_FLOOR_FACTOR = 2.0


def residual_curves(res: np.ndarray, data, model, reduced_chi2=None
                    ) -> tuple[str | None, list[tuple[float, str, str]]]:
    """What the residual histogram draws beside the residuals ``res``: a note (None when
    there is nothing to say) and the Gaussians (sigma, style, label) of the noise from the
    data and of sqrt(reduced chi2). Residuals at working precision get the note and no
    Gaussian: the noise estimate of noise-free data is c2's own variation between frames."""
    scale = np.nanmax(np.abs(np.asarray(model, float))) if np.size(model) else 0.0
    rms = float(np.sqrt(np.mean(res**2))) if res.size else 0.0
    if res.size and rms <= WORKING_PRECISION * max(float(scale), 1e-300):
        return (f"residuals at working precision (rms {rms:.2g}): no noise estimate"), []
    curves = []
    sigma = noise_from_differences(data)
    if np.isfinite(sigma) and sigma > 0:
        floor = noise_from_differences(model)
        label = f"noise from the data: {sigma:.3g}"
        if np.isfinite(floor) and sigma <= NOISE_FLOOR_FACTOR * floor:
            label += f" (at most: the fit's c2 itself varies by {floor:.3g} between frames)"
        curves.append((sigma, "C3-", label))
    s = np.sqrt(reduced_chi2) if reduced_chi2 and np.isfinite(reduced_chi2) else 0.0
    if s > 0:
        curves.append((float(s), "C0--", f"sqrt(reduced chi2): {s:.3g}"))
    return None, curves


@warnings_at_debug
def plot_residual_histogram(path, *, data, model, reduced_chi2=None) -> Path:
    """Histogram of residuals (strict upper triangle) against Gaussians of the noise
    estimated from the data alone and of the fit's sqrt(reduced chi2) (residual_curves)."""
    plt = _pyplot()
    n = data.shape[-1]
    upper = np.triu(np.ones((n, n), bool), 1)
    res = (np.asarray(data, float) - np.asarray(model, float))[..., upper].ravel()
    res = res[np.isfinite(res)]
    note, curves = residual_curves(res, data, model, reduced_chi2)
    fig, ax = plt.subplots(figsize=(6.0, 3.8), constrained_layout=True)
    lim = float(np.percentile(np.abs(res), 99.9)) if res.size else 0.0
    if lim <= 0:  # every residual 0 (or all but a few): one rounding step of c2 either side
        lim = max(float(np.max(np.abs(res))) if res.size else 0.0,
                  float(np.spacing(np.nanmax(np.abs(model)) if np.size(model) else 1.0)))
    std = float(np.std(res)) if res.size else float("nan")
    ax.hist(res, bins=80, range=(-lim, lim), density=note is None, color="0.6",
            label=f"residuals (std {std:.3g})")
    x = np.linspace(-lim, lim, 300)
    for s, style, label in curves:
        ax.plot(x, np.exp(-0.5 * (x / s) ** 2) / (s * np.sqrt(2 * np.pi)), style, label=label)
    ax.set_xlabel("data - fit")
    ax.set_ylabel("density" if note is None else "points")
    if note:  # counts on a linear axis: a few exact values, not a distribution's tails
        ax.text(0.5, 0.5, note, transform=ax.transAxes, ha="center", va="center",
                fontsize=9, bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.7"})
    else:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(1e-3 / lim, ax.get_ylim()[0]))
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return Path(path)
