"""The result of a fit: parameters with uncertainties and everything needed to judge it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from homodyne.optimization.covariance import pinv_normal

SCALING_PREFIXES = ("contrast", "offset")
# "Determined by the data": a free parameter's standard error is finite and within a limit
# set by the scale the parameter acts on. A power law's amplitude and offset (D0 and D_offset,
# gamma_dot_t0 and gamma_dot_t_offset) are judged against the level they set together at the
# convention's reference time t = 1 s, |amplitude| + |offset|: beyond it the data fix not even
# the size of that term (D_offset = 4971 +/- 19100 beside D0 = 0.001 is not a measurement),
# while an offset of 288 +/- 404 beside D0 = 1e4 is measured (small against J). An exponent
# (alpha, beta) is undetermined when its SE exceeds EXPONENT_SE_LIMIT (the power law's slope
# unknown to within +-1); zero is an ordinary value of both (normal diffusion, constant shear).
# An angle (phi0) when its 1-SE interval spans more than half a turn of the flow direction
# (SE > ANGLE_SE_LIMIT_DEG; the model has a 180 deg period). Any other parameter (scaling,
# one-time rates) when SE > RELATIVE_SE_LIMIT x |value|. Fixed parameters (SE 0) are reported
# as fixed, never as undetermined. The rules by name hold for the built-in models only: the
# parameters of a user's own model function (its "alpha" or "D0" included) all get the
# RELATIVE_SE_LIMIT rule (FitResult.generic_rules).
RELATIVE_SE_LIMIT = 1.0
EXPONENT_SE_LIMIT = 1.0
ANGLE_SE_LIMIT_DEG = 90.0
ANGLE_PARAMETERS = ("phi0",)
# (amplitude, exponent, offset) of each power law of physics.md
POWER_LAWS = (("D0", "alpha", "D_offset"), ("gamma_dot_t0", "beta", "gamma_dot_t_offset"))
# Goodness of fit, where the data carry their uncertainties (sigma given, not unit weights):
# at the optimum of a correct model chi2 follows the chi2 distribution with N - p degrees of
# freedom (reduced chi2 1 +- sqrt(2 / (N - p))). A converged fit whose chi2 is beyond that
# distribution's upper POOR_FIT_P tail (N - p = 1000: reduced chi2 > 1.23; 50: > 2.0) is
# "poor_fit": a local minimum, a wrong model or a sigma too small. A chi2 below the lower
# POOR_FIT_P tail (N - p = 1000: reduced chi2 < 0.79) says the sigma are overstated: a note
# (sigma_overstated), not a failure, as the standard errors are scaled by the reduced chi2.
# Unit weights carry no scale, so no such statement is made without sigma.
POOR_FIT_P = 1e-6
STATUS_TEXT = {
    "converged": "converged",
    "poor_fit": "converged, but the fit is poor",
    "not_converged": "NOT converged",
    "undetermined": "converged but NOT DETERMINED (every physical parameter on a bound, "
                    "fixed or undetermined)",
    "too_few_points": "NOT DETERMINED: fewer points than parameters",
    "interrupted": "INTERRUPTED (best parameters so far)",
}


@dataclass(eq=False)
class FitResult:
    """Parameters, uncertainties (covariance scaled by reduced χ²) and how the fit went."""

    parameter_names: tuple[str, ...]
    parameters: np.ndarray
    uncertainties: np.ndarray
    covariance: np.ndarray
    cost: float
    n_points: int
    reduced_chi_squared: float
    converged: bool
    stop_reason: str
    # How the data were walked. Homodyne engine: the tier, "STANDARD", "LARGE", "CHUNKED"
    # or "STREAMING" (OptimizationStrategy). nlsq backend: the nlsq method that ran
    # ("curve_fit", "curve_fit_large", "hybrid_streaming"); see ``backend``.
    strategy: str
    iterations: int
    passes: int
    coarse_passes: int = 0
    coarse_points: int = 0
    batch_size: int = 0
    at_bounds: list[str] = field(default_factory=list)
    not_moved: list[str] = field(default_factory=list)
    undetermined: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)  # held at their value (lb == ub): no error
    # the residuals are weighted by the data's own uncertainties (sigma given): chi2 then
    # measures the fit (POOR_FIT_P); with unit weights it does not
    sigma_given: bool = False
    # a user's own model function: names mean nothing to homodyne, every parameter is judged
    # by the RELATIVE_SE_LIMIT rule (the power-law and angle rules are for the built-in models)
    generic_rules: bool = False
    normal_matrix: np.ndarray | None = None  # JᵀJ at the solution (p x p)
    wall_time_s: float = 0.0
    pass_seconds: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    device: str = "cpu"
    backend: str = "homodyne"
    # Batch accounting of the homodyne engine, filled for every tier (not only STREAMING;
    # None from the nlsq backend): total_batches_processed, batch_success_rate,
    # failed_batch_indices, error_type_distribution, average_iterations_per_batch,
    # excluded_batches (per stage), checkpoint_saves, checkpoint_errors,
    # checkpoint_save_seconds_max, checkpoint_cpu_seconds_total, resumed_from_batch.
    # The guide's name; see FitMonitor.diagnostics.
    streaming_diagnostics: dict | None = None
    recovery_actions: list = field(default_factory=list)
    history: list = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    interrupted_by: str | None = None  # "SIGINT"/"SIGTERM"/"SIGHUP": the signal that stopped it
    # per power-law exponent (alpha, beta): "interior", or the logarithmic edge and whether
    # a bound pushed the optimum there (optimization/coordinates.py); empty when not fitted
    # in internal coordinates
    power_law_optimum: dict[str, str] = field(default_factory=dict)
    # multi-start (restarts.py): starts, reached_best, distinct_minima, finished,
    # screening_points, best_start, screening_chi2, and the shares of the whole run's
    # passes and wall time (screening_passes, screening_seconds, finishing_passes,
    # finishing_seconds); after a signal interrupted_while ("screening", "finishing") and
    # screened instead of reached_best and distinct_minima. None for a single start
    restarts: dict | None = None

    def __post_init__(self):
        self.covariance = consistent_covariance(self.covariance)
        vague = poorly_determined(self.parameter_names, self.parameters, self.uncertainties,
                                  generic=self.generic_rules)
        self.undetermined = [n for n in self.parameter_names
                             if n in self.undetermined or n in vague]

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaces

    def __eq__(self, other) -> bool:
        """Field by field; arrays element by element (NaN equal to NaN, as in a record
        read back): two results are equal when every number and list is the same."""
        if not isinstance(other, FitResult):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    @property
    def status(self) -> str:
        """The honest outcome: converged, not_converged, undetermined (converged with every
        physical parameter on a bound, fixed or undetermined), poor_fit (converged, with sigma
        given, to a chi2 a correct model reaches with probability below POOR_FIT_P),
        too_few_points, or interrupted (a signal stopped it: its point counts are those of an
        unfinished pass)."""
        if self.interrupted_by:
            return "interrupted"
        if self.n_points <= len(self.parameter_names) and (self.passes or self.coarse_passes):
            return "too_few_points"  # (no pass finished: stopped before any point was seen)
        if not self.converged:
            return "not_converged"
        physical = [n for n in self.parameter_names if not n.startswith(SCALING_PREFIXES)]
        flagged = set(self.at_bounds) | set(self.undetermined) | set(self.fixed)
        if physical and all(n in flagged for n in physical):
            return "undetermined"
        if self.chi2_p_value is not None and self.chi2_p_value < POOR_FIT_P:
            return "poor_fit"
        return "converged"

    @property
    def degrees_of_freedom(self) -> int:
        """Points minus free parameters (N - p)."""
        return self.n_points - (len(self.parameter_names) - len(self.fixed))

    @property
    def chi2_p_value(self) -> float | None:
        """P(chi2 >= this fit's chi2) for a correct model with these sigma (the upper tail of
        the chi2 distribution with N - p degrees of freedom); None without sigma (unit
        weights), without degrees of freedom or without a finite cost."""
        dof = self.degrees_of_freedom
        if not self.sigma_given or dof < 1 or not np.isfinite(self.cost):
            return None
        from scipy.special import chdtrc

        return float(chdtrc(dof, 2.0 * self.cost))

    @property
    def sigma_overstated(self) -> bool:
        """With sigma given, chi2 lies below the lower POOR_FIT_P tail of a correct model's
        chi2 distribution: the sigma are larger than the scatter of the data (a sigma 100x
        too large gave reduced chi2 2.5e-5 and a plain "converged")."""
        dof = self.degrees_of_freedom
        if self.chi2_p_value is None:
            return False
        from scipy.special import chdtr

        return bool(chdtr(dof, 2.0 * self.cost) < POOR_FIT_P)

    @property
    def goodness_of_fit(self) -> str:
        """What chi2 says of this fit: empty without sigma; else the reduced chi2 with its
        p-value and, for a poor fit, what it may mean and what to try; for a chi2 too small
        for the sigma, that they look overstated and by how much."""
        p = self.chi2_p_value
        if p is None:
            return ""
        text = (f"reduced chi2 = {self.reduced_chi_squared:.4g} with the data's sigma (chi2 "
                f"p-value {p:.2g} for {self.degrees_of_freedom:,} degrees of freedom)")
        if self.sigma_overstated:
            factor = 1.0 / math.sqrt(self.reduced_chi_squared) \
                if self.reduced_chi_squared > 0 else math.inf
            text += (f"; far below what these sigma allow: the sigma look about {factor:.3g}x "
                     "too large (1/sqrt(reduced chi2)); the standard errors are scaled by the "
                     "reduced chi2, not taken from sigma")
        if p < POOR_FIT_P and self.restarts and self.restarts.get("starts", 0) > 1:
            text += (f"; the best of {self.restarts['starts']} starts: a wrong model or a "
                     "sigma too small (or a minimum none of the starts reached)")
        elif p < POOR_FIT_P:
            text += ("; a local minimum or a wrong model (or a sigma too small): try "
                     "optimization.restarts")
        return text

    @property
    def x(self) -> np.ndarray:
        """Alias of ``parameters`` (scipy naming)."""
        return self.parameters

    def function_covariance(self, gradients: np.ndarray) -> np.ndarray:
        """Covariance of derived quantities f(p) with gradients (m, p): G pinv(JᵀJ) Gᵀ χ²ᵣ.

        Finite even when single parameters are undetermined, as long as f is
        (e.g. J(t) when D0 and D_offset are degenerate)."""
        if self.normal_matrix is None:
            raise ValueError("function_covariance needs the normal matrix JᵀJ, which this "
                             f"result ({self.backend} backend) does not carry")
        inv = pinv_normal(self.normal_matrix)
        G = np.atleast_2d(gradients)
        return G @ inv @ G.T * self.reduced_chi_squared

    @property
    def chi_squared(self) -> float:
        return 2.0 * self.cost

    @property
    def residuals_per_second(self) -> float:
        """Points per second of one full pass (median over the full-data passes)."""
        if not self.pass_seconds:
            return float("nan")
        return self.n_points / float(np.median(self.pass_seconds))

    def as_dict(self) -> dict:
        """Plain JSON-ready dict (no NumPy types)."""
        d = {"status": self.status, **asdict(self), "goodness_of_fit": self.goodness_of_fit,
             "chi2_p_value": self.chi2_p_value, "sigma_overstated": self.sigma_overstated}
        for k, v in list(d.items()):
            if isinstance(v, np.ndarray):
                d[k] = v.tolist()
        d["parameters_by_name"] = {
            n: {"value": float(v), "uncertainty": float(u) if np.isfinite(u) else None,
                "determined": n not in self.undetermined}
            for n, v, u in zip(self.parameter_names, self.parameters, self.uncertainties,
                               strict=True)
        }
        d["residuals_per_second"] = self.residuals_per_second
        return d

    def summary(self) -> str:
        note = self.status == "converged" and self.sigma_overstated
        head = f"{STATUS_TEXT[self.status]}" + (
            ", but the data's sigma look overstated" if note else "") + ": " + (
            f"{self.goodness_of_fit} ({self.stop_reason})"
            if self.status == "poor_fit" or note else self.stop_reason)
        lines = [head,
                 f"strategy {self.strategy}, {self.n_points:,} points, {self.passes} full "
                 "passes" + (f" (+{self.coarse_passes} on a {self.coarse_points:,}-point "
                             "subsample)" if self.coarse_passes else "")
                 + f", {self.iterations} iterations, {self.wall_time_s:.2f} s",
                 f"reduced chi2 = {self.reduced_chi_squared:.6g}"
                 + (f" (chi2 p-value {self.chi2_p_value:.2g}, sigma given)"
                    if self.chi2_p_value is not None else "")]
        if self.restarts:
            lines.extend(restarts_summary(self.restarts))
        for n, v, u in zip(self.parameter_names, self.parameters, self.uncertainties,
                           strict=True):
            flag = " (at bound)" if n in self.at_bounds else ""
            flag += " (did not move)" if n in self.not_moved else ""
            flag += ((" (NOT DETERMINED by the data)" if not np.isfinite(u) else
                      f" (NOT DETERMINED by the data: "
                      f"{undetermined_reason(n, generic=self.generic_rules)})")
                     if n in self.undetermined else "")
            flag += " (fixed)" if n in self.fixed else ""
            lines.append(f"  {n:>20s} = {v: .10g} +/- {u:.3g}{flag}")
        for n, where in self.power_law_optimum.items():
            lines.append(f"  power law of {n}: {where}")
        return "\n".join(lines)


def _same(a, b) -> bool:
    """Equality of two result fields, arrays and nested lists/dicts of numbers included."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            return bool(np.array_equal(np.asarray(a, float), np.asarray(b, float),
                                       equal_nan=True))
        except (TypeError, ValueError):
            return bool(np.array_equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return bool(a == b)


def poorly_determined(names, values, uncertainties, *, generic: bool = False) -> list[str]:
    """Names whose standard error is not finite or exceeds its limit (see RELATIVE_SE_LIMIT):
    the power-law level for amplitudes and offsets, EXPONENT_SE_LIMIT for exponents,
    ANGLE_SE_LIMIT_DEG for an angle, RELATIVE_SE_LIMIT x |value| otherwise (for every
    parameter of a ``generic`` model: a user's model function)."""
    values = np.ravel(np.asarray(values, dtype=float))
    uncertainties = np.ravel(np.asarray(uncertainties, dtype=float))
    if not len(names) == values.size == uncertainties.size:  # a partial record: no judgement
        return []
    value = dict(zip(names, values, strict=True))
    out = []
    for n, u in zip(names, uncertainties, strict=True):
        if not np.isfinite(u) or u > _se_limit(n, value, generic):
            out.append(n)
    return out


def _se_limit(name: str, value: dict, generic: bool) -> float:
    """The standard error above which ``name`` counts as not determined (see RELATIVE_SE_LIMIT)."""
    if generic:
        return RELATIVE_SE_LIMIT * abs(value[name])
    if name in ANGLE_PARAMETERS:
        return ANGLE_SE_LIMIT_DEG
    for amplitude, exponent, offset in POWER_LAWS:
        if name == exponent:
            return EXPONENT_SE_LIMIT
        if name in (amplitude, offset):
            return abs(value.get(amplitude, 0.0)) + abs(value.get(offset, 0.0))
    return RELATIVE_SE_LIMIT * abs(value[name])


def undetermined_reason(name: str, *, generic: bool = False) -> str:
    """Why a parameter with a finite standard error counts as not determined."""
    if generic:
        name = ""  # no rule by name
    if name in ANGLE_PARAMETERS:
        return f"standard error above {ANGLE_SE_LIMIT_DEG:g} deg"
    for amplitude, exponent, offset in POWER_LAWS:
        if name == exponent:
            return f"standard error above {EXPONENT_SE_LIMIT:g}"
        if name in (amplitude, offset):
            return f"standard error above |{amplitude}| + |{offset}|"
    return "standard error above |value|" if RELATIVE_SE_LIMIT == 1.0 else \
        f"standard error above {RELATIVE_SE_LIMIT:g} x |value|"


def restarts_summary(r: dict) -> list[str]:
    """The summary lines of a multi-start run (FitResult.restarts)."""
    if r.get("interrupted_while"):
        head = (f"multi-start of {r['starts']} starts interrupted while "
                f"{r['interrupted_while']} ({r['screened']} screened on "
                f"{r['screening_points']:,} points)")
    else:
        head = (f"best of {r['starts']} starts, reached by {r['reached_best']} "
                f"({r['distinct_minima']} distinct minima on {r['screening_points']:,} "
                f"points, {r['finished']} finished)")
    if "screening_seconds" not in r:
        return [head]
    return [head, f"screening {r['screening_passes']} passes in {r['screening_seconds']:.2f} "
                  f"s, finishing {r['finishing_passes']} full passes in "
                  f"{r['finishing_seconds']:.2f} s"]


def consistent_covariance(cov):
    """Rows and columns of undetermined parameters (infinite variance) carry no finite
    covariance: their off-diagonal entries become NaN (undefined), the variance stays inf."""
    if cov is None:
        return cov
    cov = np.array(cov, dtype=float, copy=True)
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        return cov
    bad = np.isinf(np.diag(cov))
    if bad.any():
        diag = np.diag(cov).copy()
        cov[bad, :] = np.nan
        cov[:, bad] = np.nan
        cov[np.diag_indices_from(cov)] = diag
    return cov
