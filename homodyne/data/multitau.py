"""APS multi-tau one-time results (boost_corr NeXus layout): g2(q, tau) with errors."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

import h5py
import numpy as np

from homodyne.data.errors import DataFileError

G2 = "/xpcs/multitau/normalized_g2"
G2_ERR = "/xpcs/multitau/normalized_g2_err"
DELAYS = "/xpcs/multitau/delay_list"
FRAME_TIME = "/entry/instrument/detector_1/frame_time"
START_TIME = "/entry/start_time"
Q_LIST = "/xpcs/qmap/dynamic_v_list_dim0"
PHI_LIST = "/xpcs/qmap/dynamic_v_list_dim1"


@dataclass(frozen=True)
class OneTimeData:
    """One file's g2: ``g2[tau, q]`` with errors, delays in seconds, and when it started."""

    path: str
    tau: np.ndarray
    q: np.ndarray
    phi_deg: np.ndarray
    g2: np.ndarray
    g2_err: np.ndarray
    frame_time: float
    start_time: datetime


def read_multitau(path) -> OneTimeData:
    """Read one multi-tau result file; every missing or malformed piece is named."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataFileError(path, "file does not exist")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(path, f"not a readable HDF5 file: {exc}") from exc
    with h5:
        for name in (G2, G2_ERR, DELAYS, FRAME_TIME, START_TIME, Q_LIST):
            if name not in h5:
                raise DataFileError(path, f"missing dataset {name} (not a multi-tau result?)")
        g2 = np.asarray(h5[G2][()], dtype=np.float64)
        err = np.asarray(h5[G2_ERR][()], dtype=np.float64)
        delays = np.asarray(h5[DELAYS][()], dtype=np.float64).ravel()
        frame_time = float(np.asarray(h5[FRAME_TIME][()]).ravel()[0])
        q = np.asarray(h5[Q_LIST][()], dtype=np.float64).ravel()
        phi = np.asarray(h5[PHI_LIST][()], dtype=np.float64).ravel() if PHI_LIST in h5 else \
            np.zeros(1)
        raw = h5[START_TIME][()]
    raw = raw.decode() if isinstance(raw, bytes) else str(raw)
    try:
        start = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise DataFileError(path, f"{START_TIME} is not a date/time: {raw!r}") from exc
    if g2.shape != err.shape or g2.shape != (delays.size, q.size):
        raise DataFileError(path, f"g2 {g2.shape}, errors {err.shape}, {delays.size} delays and "
                                  f"{q.size} q values do not fit together")
    if not (frame_time > 0):
        raise DataFileError(path, f"{FRAME_TIME} must be positive, got {frame_time}")
    return OneTimeData(path, delays * frame_time, q, phi, g2, err, frame_time, start)


MEDIAN_ABS_NORMAL = 0.6744897501960817  # median of |N(0, 1)|

def scatter_ratio(d, ok) -> float:
    """Robust ratio of the observed point-to-point scatter to the reported errors.

    Second differences over adjacent usable delays cancel a locally linear decay:
    median |g[k+1] - 2 g[k] + g[k-1]| / sqrt(e[k+1]² + 4 e[k]² + e[k-1]²), divided by
    the median of |N(0,1)|: 1 when the errors describe the scatter."""
    g = np.where(ok, d.g2, np.nan)
    e = np.where(ok, d.g2_err, np.nan)
    d2 = g[2:] - 2 * g[1:-1] + g[:-2]
    s2 = np.sqrt(e[2:] ** 2 + 4 * e[1:-1] ** 2 + e[:-2] ** 2)
    return float(np.nanmedian(np.abs(d2) / s2)) / MEDIAN_ABS_NORMAL
