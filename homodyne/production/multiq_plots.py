"""Figures of the multi-q summary: each parameter against q (per-q values share one J(t),
so they must agree: the weighted mean and each bin's deviation in standard errors) and
against file / sample age."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from homodyne.plots import _pyplot, grid_shape, warnings_at_debug


def weighted_mean(values, se) -> tuple[float, float]:
    """Inverse-variance weighted mean and its standard error (finite, positive SE only)."""
    v, s = np.asarray(values, float), np.asarray(se, float)
    ok = np.isfinite(v) & np.isfinite(s) & (s > 0)
    if not ok.any():
        return float("nan"), float("nan")
    w = 1.0 / s[ok] ** 2
    return float(np.sum(w * v[ok]) / np.sum(w)), float(1.0 / np.sqrt(np.sum(w)))


def deviations_in_se(values, se) -> np.ndarray:
    """(value - weighted mean) / SE for each bin."""
    mean, _ = weighted_mean(values, se)
    return (np.asarray(values, float) - mean) / np.asarray(se, float)


@warnings_at_debug
def plot_parameters_vs_q(path, table, names) -> Path:
    """Per parameter: value +/- SE against q per file, with the file's weighted mean
    (line and band), and below it each bin's deviation from that mean in SE."""
    plt = _pyplot()
    cols, rows = grid_shape(len(names))
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.8 * cols, 4.6 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [2, 1] * rows},
                             constrained_layout=True)
    for ax in axes.flat:
        ax.set_visible(False)  # panels in use are shown below
    for j, name in enumerate(names):
        top, bottom = axes[2 * (j // cols), j % cols], axes[2 * (j // cols) + 1, j % cols]
        top.set_visible(True)
        bottom.set_visible(True)
        for c, (fid, g) in enumerate(table.groupby("file", sort=True)):
            v, s = g[name].to_numpy(float), g[f"{name}_se"].to_numpy(float)
            mean, mean_se = weighted_mean(v, s)
            color = f"C{c % 10}"
            top.errorbar(g["q"], v, s, fmt="o", ms=3, color=color, label=str(fid))
            top.axhline(mean, color=color, lw=0.8)
            top.axhspan(mean - mean_se, mean + mean_se, color=color, alpha=0.15)
            bottom.plot(g["q"], deviations_in_se(v, s), "o-", ms=3, color=color)
        top.set_title(name)
        bottom.axhspan(-2, 2, color="0.9")
        bottom.axhline(0, color="0.4", lw=0.8)
        bottom.set_xlabel("q [1/Å]")
        bottom.set_ylabel("(value - mean) / SE")
    axes[0, 0].legend(fontsize=7, title="file", title_fontsize=7)
    fig.suptitle("per-q fits: value ± SE, weighted mean per file (line ± its SE)")
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return Path(path)


@warnings_at_debug
def plot_parameters_vs_file(path, table, names) -> Path:
    """Per parameter: every bin's value (small points) and the weighted mean over q with
    its SE (large points) against sample age when the files record it, else file order."""
    plt = _pyplot()
    files = sorted(table["file"].unique(), key=str)
    ages = table.groupby("file")["age_s"].first() if "age_s" in table else None
    use_age = ages is not None and ages.notna().all()
    x_of = {f: (float(ages[f]) if use_age else i) for i, f in enumerate(files)}
    cols, rows = grid_shape(len(names))
    fig, axes = plt.subplots(rows, cols, figsize=(3.8 * cols, 3.4 * rows), squeeze=False,
                             constrained_layout=True)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    for j, name in enumerate(names):
        ax = axes.flat[j]
        for fid, g in table.groupby("file"):
            x = x_of[fid]
            ax.plot(np.full(len(g), x), g[name], ".", color="0.6", ms=3)
            mean, mean_se = weighted_mean(g[name], g[f"{name}_se"])
            ax.errorbar([x], [mean], [mean_se], fmt="o", color="C3", ms=5)
        ax.set_title(name)
        ax.set_xlabel("sample age [s]" if use_age else "file")
        if not use_age:
            ax.set_xticks(range(len(files)), [str(f) for f in files], rotation=45, ha="right",
                          fontsize=7)
    fig.suptitle("weighted mean over q (red, ± SE) and each q bin (grey) per file")
    fig.savefig(path, dpi=90, format="png")
    plt.close(fig)
    return Path(path)
