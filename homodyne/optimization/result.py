"""The result of a fit: parameters with uncertainties and everything needed to judge it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from homodyne.optimization.covariance import pinv_normal


@dataclass
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
    normal_matrix: np.ndarray | None = None  # JᵀJ at the solution (p x p)
    wall_time_s: float = 0.0
    pass_seconds: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    device: str = "cpu"
    backend: str = "homodyne"
    streaming_diagnostics: dict | None = None
    recovery_actions: list = field(default_factory=list)
    history: list = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    interrupted_by: str | None = None  # "SIGINT"/"SIGTERM" when a signal stopped the fit

    @property
    def x(self) -> np.ndarray:
        """Alias of ``parameters`` (scipy naming)."""
        return self.parameters

    def function_covariance(self, gradients: np.ndarray) -> np.ndarray:
        """Covariance of derived quantities f(p) with gradients (m, p): G pinv(JᵀJ) Gᵀ χ²ᵣ.

        Finite even when single parameters are undetermined, as long as f is
        (e.g. J(t) when D0 and D_offset are degenerate)."""
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
        d = asdict(self)
        for k, v in list(d.items()):
            if isinstance(v, np.ndarray):
                d[k] = v.tolist()
        d["parameters_by_name"] = {
            n: {"value": float(v), "uncertainty": float(u)}
            for n, v, u in zip(self.parameter_names, self.parameters, self.uncertainties,
                               strict=True)
        }
        d["residuals_per_second"] = self.residuals_per_second
        return d

    def summary(self) -> str:
        lines = [f"strategy {self.strategy}, {self.n_points:,} points, {self.passes} full "
                 f"passes (+{self.coarse_passes} on a {self.coarse_points:,}-point subsample), "
                 f"{self.iterations} iterations, {self.wall_time_s:.2f} s",
                 f"{'converged' if self.converged else 'NOT converged'}: {self.stop_reason}",
                 f"reduced chi2 = {self.reduced_chi_squared:.6g}"]
        for n, v, u in zip(self.parameter_names, self.parameters, self.uncertainties,
                           strict=True):
            flag = " (at bound)" if n in self.at_bounds else ""
            flag += " (did not move)" if n in self.not_moved else ""
            flag += " (NOT DETERMINED by the data)" if n in self.undetermined else ""
            flag += " (fixed)" if n in self.fixed else ""
            lines.append(f"  {n:>20s} = {v: .10g} +/- {u:.3g}{flag}")
        return "\n".join(lines)
