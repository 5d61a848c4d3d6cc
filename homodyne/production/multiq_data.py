"""A synthetic aging series in the APS-U layout: several files (one per sample age), each
with several q bins that share one J(t), so that the scatter/gather of every (file, q)
can be checked against a known truth. No public measured two-time file has several q."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from homodyne.data.synthetic import generate_synthetic
from homodyne.model import ModelSpec


@dataclass(frozen=True)
class AgingSeries:
    """What the series is made of; file k has age ``ages_s[k]`` and
    D0 = D0 / (1 + age / aging_time_s) (the sample slows down as it ages)."""

    q: tuple[float, ...] = (0.003, 0.004, 0.005, 0.006, 0.007)
    ages_s: tuple[float, ...] = (0.0, 600.0, 1200.0)
    frames: int = 200
    angles: tuple[float, ...] = (0.0, 90.0)
    dt: float = 0.1
    physical: tuple[float, ...] = (1.0e4, -0.5, 100.0)  # D0, alpha, D_offset at age 0
    aging_time_s: float = 600.0
    contrast: float = 0.3
    offset: float = 1.0
    noise: float = 0.01
    seed: int = 21

    def truth(self, k: int) -> list[float]:
        """Physical parameters of file k."""
        d0, *rest = self.physical
        return [d0 / (1.0 + self.ages_s[k] / self.aging_time_s), *rest]

    def file_name(self, k: int) -> str:
        return f"age_{k:02d}.h5"


def write_series_file(folder, series: AgingSeries, k: int, *, overwrite=True) -> Path:
    """File k of the series: every q bin from the same parameters, the age as an attribute."""
    spec = ModelSpec(mode="static", q=series.q[0], dt=series.dt, n_frames=series.frames,
                     phi_deg=tuple(series.angles), scaling="individual")
    params = spec.pack(series.contrast, series.offset, series.truth(k))
    path = Path(folder) / series.file_name(k)
    generate_synthetic(path, spec, params, noise_sigma=series.noise, seed=series.seed + k,
                       more_q=tuple(series.q[1:]), attrs={"age_s": series.ages_s[k]},
                       overwrite=overwrite)
    return path
