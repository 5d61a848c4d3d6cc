"""Per-q fits of g2(tau) = offset + contrast·exp(-2 (Gamma tau)^beta), weighted by the
measured sigma, and the power law of the rates Gamma(q) = A q^n (n = 2 for diffusion).

Each q bin is its own least-squares problem, solved by the package's engine
(``NLSQWrapper.fit``); the outcome of every q and of the whole set is stated, never
hidden: a rate the delay window does not resolve is reported as such.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from homodyne.data.errors import DataFileError
from homodyne.data.multitau import OneTimeData, scatter_ratio
from homodyne.jaxconf import jnp
from homodyne.optimization.engine import EngineOptions
from homodyne.optimization.result import STATUS_TEXT, FitResult

log = logging.getLogger("homodyne")
BETA_BOUNDS = (0.2, 2.0)


@dataclass(frozen=True)
class OneTimeOptions:
    """How to fit: beta free or fixed at 1, which errors, which delays, how long."""

    beta: str = "free"  # "free" or "fixed" (beta = 1)
    errors: str = "measured"  # "measured" or "scatter" (rescaled to the observed scatter)
    min_tau_s: float | None = None  # None: from the data
    max_tau_s: float | None = None  # None: from the data
    max_iterations: int = 200
    q_range: tuple[float, float] | None = None  # None: every q bin


@dataclass
class QFit:
    """The fit at one q bin."""

    q: float
    q_index: int
    result: FitResult
    error_scale: float
    tau: np.ndarray
    g2: np.ndarray
    sigma: np.ndarray

    def value(self, name: str) -> float:
        return float(self.result.parameters[self.result.parameter_names.index(name)])

    def error(self, name: str) -> float:
        return float(self.result.uncertainties[self.result.parameter_names.index(name)])

    def row(self) -> dict:
        r = self.result
        row = {"q": self.q, "q_index": self.q_index, "status": r.status,
               "stop_reason": r.stop_reason, "n_points": r.n_points,
               "reduced_chi_squared": r.reduced_chi_squared, "error_scale": self.error_scale}
        for n in ("offset", "contrast", "gamma", "beta"):
            if n in r.parameter_names:
                row[n] = self.value(n)
                row[f"{n}_err"] = self.error(n)
                row[f"{n}_flag"] = ("undetermined" if n in r.undetermined else
                                    "at_bound" if n in r.at_bounds else "")
            else:
                row[n], row[f"{n}_err"], row[f"{n}_flag"] = 1.0, 0.0, "fixed"
        return row


@dataclass
class OneTimeResult:
    """Every q bin's fit, the rates' power law and one honest overall status."""

    data_file: str
    options: OneTimeOptions
    fits: list[QFit]
    power_law: dict = field(default_factory=dict)
    j_model: dict | None = None  # the J-model across q and ages, when a series is fitted

    @property
    def n_points(self) -> int:
        return sum(f.result.n_points for f in self.fits)

    @property
    def status(self) -> str:
        """not_converged if any q did not converge; undetermined if no q determined its
        rate (too_few_points if every q lacked points); poor_fit if a resolved rate's fit is
        poor (its chi2 with the data's sigma, FitResult.status); else converged."""
        states = [f.result.status for f in self.fits]
        if not states or all(s == "too_few_points" for s in states):
            return "too_few_points"
        if "not_converged" in states or self._j_status == "not_converged":
            return "not_converged"
        if not self.resolved:
            return "undetermined"
        if any(f.result.status == "poor_fit" for f in self.resolved):
            return "poor_fit"
        # the J-model is what a series is fitted for: one that determines nothing or fits
        # poorly is the run's outcome (it was 'converged', --strict exit 0)
        if self._j_status in ("undetermined", "too_few_points", "poor_fit"):
            return self._j_status
        return "converged"

    @property
    def _j_status(self) -> str | None:
        return (self.j_model or {}).get("status")

    @property
    def sigma_overstated(self) -> bool:
        """Some resolved q bin's chi2 lies in the lower tail for its sigma (the note a
        two-time fit makes; the run's first line says it and log_summary warns)."""
        return self.status == "converged" and bool(self._overstated())

    def _overstated(self) -> list[QFit]:
        return [f for f in self.resolved
                if f.result.status == "converged" and f.result.sigma_overstated]

    @property
    def resolved(self) -> list[QFit]:
        """q bins whose fit converged with a rate inside its bounds known to within 100%
        (a poor fit's too: its status says so)."""
        return [f for f in self.fits if f.result.status in ("converged", "poor_fit")
                and not ({"gamma"} & (set(f.result.undetermined) | set(f.result.at_bounds)))
                and f.error("gamma") < f.value("gamma")]

    def summary(self) -> str:
        bad = [f"{f.q:.4g}" for f in self.fits if f.result.status == "not_converged"]
        from_j = self.status not in ("converged", "not_converged") \
            and self.status == self._j_status and self.resolved \
            and not any(f.result.status == "poor_fit" for f in self.resolved)
        head = f"{STATUS_TEXT[self.status]}: " + ("the J-model across ages; " if from_j else "") \
            + f"{len(self.fits)} q bins fitted, {len(self.resolved)} with a resolved rate"
        if bad:
            head += f"; NOT converged at q = {', '.join(bad)}"
        poor = [f"{f.q:.4g}" for f in self.resolved if f.result.status == "poor_fit"]
        if poor:
            head += (f"; the fit is poor (chi2 with the data's sigma) at q = {', '.join(poor)}: "
                     "a wrong model or a sigma too small" + (" (one_time.errors: scatter)"
                                                            if self.options.errors == "measured"
                                                            else ""))
        over = self._overstated() if self.status == "converged" else []
        if over:
            factors = [1 / np.sqrt(f.result.reduced_chi_squared)
                       if f.result.reduced_chi_squared > 0 else np.inf for f in over]
            head = head.replace(STATUS_TEXT["converged"], "converged, but the data's sigma "
                                "look overstated", 1)
            head += (f"; chi2 far below what the sigma allow at q = "
                     f"{', '.join(f'{f.q:.4g}' for f in over)} (sigma about "
                     f"{min(factors):.3g}-{max(factors):.3g}x too large; standard errors are "
                     "scaled by the reduced chi2)")
        lines = [head, f"one-time g2 of {self.data_file}: {self.n_points:,} points, beta "
                 f"{self.options.beta}, errors {self.options.errors}"]
        pl = self.power_law
        if pl.get("exponent") is not None:
            lines.append(f"rates: Gamma = A q^n with n = {pl['exponent']:.4g} +/- "
                         f"{pl['exponent_err']:.2g} over {pl['n_q']} q bins (2 = diffusion)")
        jm = self.j_model
        if jm is not None:
            lines.append(
                f"J-model across {len(jm['ages_s'])} ages and q, J(t) = D0 t^alpha + D_offset: "
                f"{STATUS_TEXT[jm['status']]}, D0 = {jm['D0']:.5g}, alpha = {jm['alpha']:.4g}, "
                f"D_offset = {jm['D_offset']:.5g}, chi2_red = {jm['reduced_chi_squared']:.3g}"
                + ("; UNPHYSICAL: J(t) < 0 inside the fitted window"
                   if jm["J_negative_in_window"] else ""))
        for f in self.fits:
            r = f.row()
            lines.append(f"  q = {f.q:.5g}: Gamma = {r['gamma']:.5g} +/- {r['gamma_err']:.2g} "
                         f"1/s, beta = {r['beta']:.4g}, contrast = {r['contrast']:.4g}, "
                         f"offset = {r['offset']:.5g}, chi2_red = "
                         f"{r['reduced_chi_squared']:.3g}"
                         f"{'' if r['status'] == 'converged' else ' [' + r['status'] + ']'}"
                         f"{' [gamma ' + r['gamma_flag'] + ']' if r['gamma_flag'] else ''}")
        return "\n".join(lines)


def g2_model(tau, offset, contrast, gamma, beta=1.0):
    """offset + contrast·exp(-2 (Gamma tau)^beta)."""
    return offset + contrast * jnp.exp(-2.0 * (gamma * tau) ** beta)


def start_and_bounds(tau, g2, free_beta: bool, sigma=None):
    """Start values from the data (baseline, initial contrast, half-decay delay; points
    with errors far above the median ignored); bounds wide enough for any normalisation
    and for rates the delay window can resolve."""
    good = np.ones(tau.size, bool) if sigma is None else sigma <= 3 * np.median(sigma)
    t, g = tau[good], g2[good]
    n = t.size
    k = max(1, min(3, n // 10))
    offset = float(np.median(g[-max(2, n // 10):]))
    contrast = max(float(np.median(g[:k])) - offset, 1e-3)
    half = t[int(np.argmin(np.abs(g - (offset + contrast / 2))))]
    gamma = np.log(2) / (2 * half)
    g_lo, g_hi = 1e-2 / tau.max(), 1e2 / tau.min()
    spread = float(np.ptp(g)) or 1.0
    span = spread + abs(offset)
    p0 = [offset, min(contrast, 2.5 * spread), float(np.clip(gamma, 2 * g_lo, 0.5 * g_hi))]
    lb = [offset - 10 * span, 0.0, g_lo]
    ub = [offset + 10 * span, 3 * spread, g_hi]
    if free_beta:
        p0.append(1.0)
        lb.append(BETA_BOUNDS[0])
        ub.append(BETA_BOUNDS[1])
    return np.array(p0), np.array(lb), np.array(ub)


def error_scale(g2, sigma) -> float:
    """Observed scatter / reported errors (second differences, robust), never below 1."""

    class _D:
        pass

    d = _D()
    d.g2, d.g2_err = g2[:, None], sigma[:, None]
    r = scatter_ratio(d, np.ones_like(d.g2, bool))
    return max(1.0, r) if np.isfinite(r) else 1.0


def fit_q(tau, g2, sigma, *, free_beta: bool, max_iterations: int = 200) -> FitResult:
    """One q bin with the engine; sigma are the weights."""
    from homodyne.optimization.nlsq_wrapper import NLSQWrapper

    names = ["offset", "contrast", "gamma"] + (["beta"] if free_beta else [])
    p0, lb, ub = start_and_bounds(tau, g2, free_beta, sigma)

    def model(t, *p):
        return g2_model(t, *p)

    w = NLSQWrapper(options=EngineOptions(max_iterations=max_iterations, coarse=False))
    return w.fit(model, tau, g2, p0, (lb, ub), sigma=sigma, parameter_names=names)


def usable_bins(data: OneTimeData, options: OneTimeOptions
                ) -> tuple[float, float, list[tuple[int, np.ndarray]]]:
    """The delay window and the q bins a fit uses (index, mask of usable delays): those in
    q_range with two or more points of finite g2, finite sigma > 0 and delay in the
    window. Bins skipped are one warning line; none usable is a DataFileError naming why
    (the same check for the run and ``homodyne validate``)."""
    lo = options.min_tau_s if options.min_tau_s is not None else float(np.min(data.tau))
    hi = options.max_tau_s if options.max_tau_s is not None else float(np.max(data.tau))
    qr = options.q_range
    chosen = [i for i, q in enumerate(data.q) if qr is None or qr[0] <= q <= qr[1]]
    if not chosen:
        raise DataFileError(data.path, f"one_time.q_range [{qr[0]:g}, {qr[1]:g}] selects no q "
                                       f"bin (the file has {data.q.size} bins, q = "
                                       f"{data.q.min():.4g} to {data.q.max():.4g}); widen it")
    in_window = (data.tau >= lo) & (data.tau <= hi)
    if in_window.sum() < 2:
        raise DataFileError(data.path, f"{int(in_window.sum())} delays of the file lie in "
                                       f"[{lo:.3g}, {hi:.3g}] s (the file's delays: "
                                       f"{data.tau.min():.3g} to {data.tau.max():.3g} s); fix "
                                       "one_time.min_tau_s/max_tau_s")
    usable, skipped = [], []
    for i in chosen:
        g, s = data.g2[:, i], data.g2_err[:, i]
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(g) & np.isfinite(s) & (s > 0) & in_window
        (usable if ok.sum() >= 2 else skipped).append((i, ok))
    if not usable:
        raise DataFileError(data.path, f"no q bin has two usable points (finite g2, finite "
                                       f"sigma > 0, delay in [{lo:.3g}, {hi:.3g}] s); check the "
                                       "errors column and one_time.min_tau_s/max_tau_s/q_range")
    if skipped:
        log.warning("%d of %d q bins skipped (fewer than two usable points: finite g2, finite "
                    "sigma > 0, delay in the window): q = %s", len(skipped), len(chosen),
                    ", ".join(f"{data.q[i]:.5g}" for i, _ in skipped))
    n_window = int(in_window.sum())
    thinned = [(i, int(ok.sum())) for i, ok in usable if ok.sum() < n_window]
    # a bin that keeps fewer than half its delays is warned about (a table of sigma <= 0
    # fitted on 1 point of 180 said nothing); a few points of sigma = 0 at the long delays,
    # as measured multi-tau files hold, only at DEBUG
    worst = [(i, k) for i, k in thinned if 2 * k < n_window]
    if thinned:
        shown = worst or thinned
        log.log(logging.WARNING if worst else logging.DEBUG,
                "delay points dropped%s in %d of %d q bins (g2 or sigma not finite, or sigma "
                "<= 0), of %d in the window: %s", " (more than half)" if worst else "",
                len(shown), len(usable), n_window,
                "; ".join(f"q = {data.q[i]:.5g}: {k} kept, {n_window - k} dropped"
                          for i, k in shown))
    return lo, hi, usable


def fit_one_time(data: OneTimeData, options: OneTimeOptions = OneTimeOptions()
                 ) -> OneTimeResult:
    """Fit every q bin of ``data`` with usable points; then Gamma(q) = A q^n."""
    if options.beta not in ("free", "fixed"):
        raise ValueError(f"beta must be 'free' or 'fixed', got {options.beta!r}")
    if options.errors not in ("measured", "scatter"):
        raise ValueError(f"errors must be 'measured' or 'scatter', got {options.errors!r}")
    lo, hi, usable = usable_bins(data, options)
    log.info("one-time fit of %s: %d delays %.3g-%.3g s used (%s), %d q bins, beta %s, "
             "errors %s", data.path, int(np.sum((data.tau >= lo) & (data.tau <= hi))), lo, hi,
             "from the data" if options.max_tau_s is None else "max_tau_s set", data.q.size,
             options.beta, options.errors)
    fits = []
    for i, ok in usable:
        q = data.q[i]
        tau, g, s = data.tau[ok], data.g2[ok, i], data.g2_err[ok, i]
        scale = error_scale(g, s) if options.errors == "scatter" else 1.0
        r = fit_q(tau, g, s * scale, free_beta=options.beta == "free",
                  max_iterations=options.max_iterations)
        fits.append(QFit(float(q), i, r, scale, tau, g, s * scale))
    res = OneTimeResult(data.path, options, fits)
    res.power_law = rate_power_law(res.resolved)
    return res


def rate_power_law(fits: list[QFit]) -> dict:
    """Weighted straight line through log Gamma against log q: exponent n and prefactor."""
    if len(fits) < 2:
        return {"exponent": None, "exponent_err": None, "prefactor": None, "n_q": len(fits),
                "J_median": None}
    q = np.array([f.q for f in fits])
    g = np.array([f.value("gamma") for f in fits])
    e = np.array([f.error("gamma") for f in fits])
    w = np.where(np.isfinite(e) & (e > 0), g / np.where(e > 0, e, 1.0), 1.0)
    A = np.vstack([np.ones_like(q), np.log(q)]).T * w[:, None]
    coef, *_ = np.linalg.lstsq(A, np.log(g) * w, rcond=None)
    # (AᵀA)⁻¹ from A's R factor: nearly equal q make AᵀA singular to working precision,
    # and its pseudo-inverse then dropped the large variance (n = 9e4 +/- 0.002 for two q
    # 1e-7 apart); R⁻¹ keeps it
    try:
        r_inv = np.linalg.inv(np.linalg.qr(A, mode="r"))
        cov = r_inv @ r_inv.T
    except np.linalg.LinAlgError:
        cov = np.full((2, 2), np.inf)
    resid = (np.log(g) - coef[0] - coef[1] * np.log(q)) * w
    scale = max(1.0, float(resid @ resid) / max(len(q) - 2, 1))
    with np.errstate(over="ignore"):  # a huge exponent's prefactor overflows: inf
        prefactor = float(np.exp(coef[0]))
    return {"exponent": float(coef[1]), "exponent_err": float(np.sqrt(cov[1, 1] * scale)),
            "prefactor": prefactor, "n_q": len(q),
            "J_median": float(np.median(g / q**2))}
