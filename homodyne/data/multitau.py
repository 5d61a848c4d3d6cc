"""APS multi-tau one-time results (boost_corr NeXus layout): g2(q, tau) with errors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import h5py
import numpy as np

from homodyne.data.errors import DataFileError, data_file
from homodyne.data.h5storage import (
    SEQUENCES,
    dangling_soft_link,
    declared_bytes,
    external_link,
    holds_sequences,
    never_written,
    not_real_numbers,
    one_object_twice,
    refuse_unread_storage,
    unreadable,
)
from homodyne.data.vlenheap import vlen_string_problem
from homodyne.model import frame_time_problem

G2 = "/xpcs/multitau/normalized_g2"
G2_ERR = "/xpcs/multitau/normalized_g2_err"
DELAYS = "/xpcs/multitau/delay_list"
FRAME_TIME = "/entry/instrument/detector_1/frame_time"
START_TIME = "/entry/start_time"
Q_LIST = "/xpcs/qmap/dynamic_v_list_dim0"
PHI_LIST = "/xpcs/qmap/dynamic_v_list_dim1"
MAX_AXIS = 1_000_000  # delays or q bins in one file: far above any multi-tau result
MAX_DATE_BYTES = 4096  # one date/time as text (or a number)


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
    path = data_file(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataFileError(path, f"not a readable HDF5 file: {exc}") from exc
    try:
        with h5:
            for name in (G2, G2_ERR, DELAYS, FRAME_TIME, START_TIME, Q_LIST, PHI_LIST):
                _refuse_external_link(path, h5, name)
            for name in (G2, G2_ERR, DELAYS, FRAME_TIME, START_TIME, Q_LIST):
                if name not in h5:
                    raise DataFileError(path, f"missing dataset {name} (not a multi-tau "
                                              "result?)")
            delays = _numeric(h5, DELAYS, path, MAX_AXIS).ravel()
            q = _numeric(h5, Q_LIST, path, MAX_AXIS).ravel()
            frame_time = _numeric(h5, FRAME_TIME, path, 1).ravel()
            phi = _numeric(h5, PHI_LIST, path, MAX_AXIS).ravel() if PHI_LIST in h5 else \
                np.zeros(1)
            for name in (G2, G2_ERR):  # checked before reading: a file cannot ask for GBs
                shape = getattr(h5[name], "shape", None)
                if shape != (delays.size, q.size):
                    raise DataFileError(path, f"{name} has shape {shape}; {delays.size} delays "
                                              f"and {q.size} q values need "
                                              f"{(delays.size, q.size)}")
            twice = one_object_twice(h5, (G2, G2_ERR))
            if twice:
                raise DataFileError(path, twice)
            g2 = _numeric(h5, G2, path, delays.size * q.size)
            err = _numeric(h5, G2_ERR, path, delays.size * q.size)
            if not isinstance(h5[START_TIME], h5py.Dataset):
                raise DataFileError(path, f"{START_TIME} is not a dataset")
            if h5[START_TIME].size not in (None, 1):  # one date; never read billions
                raise DataFileError(path, f"{START_TIME} holds {h5[START_TIME].size:,} values; "
                                          "expected one date/time")
            refuse_unread_storage(path, h5, START_TIME, h5[START_TIME])
            if declared_bytes(h5[START_TIME]) > MAX_DATE_BYTES:  # an HDF5 array type: GBs
                raise DataFileError(path, f"{START_TIME} declares "
                                          f"{declared_bytes(h5[START_TIME]):,} bytes; "
                                          "expected one date/time")
            if holds_sequences(h5[START_TIME].id.get_type()):  # (reading one segfaulted)
                raise DataFileError(path, f"{START_TIME} {SEQUENCES}")
            damaged = vlen_string_problem(h5, h5[START_TIME], START_TIME)  # (one hung HDF5)
            if damaged:
                raise DataFileError(path, damaged)
            raw = h5[START_TIME][()]
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, DataFileError):
            raise
        raise DataFileError(path, f"damaged HDF5 file (metadata unreadable: {exc}); "
                                  "re-export or re-copy it") from None
    if isinstance(raw, np.ndarray) and raw.size == 1:  # one date stored as a 1-value array
        raw = raw.ravel()[0]
    raw = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
    try:
        start = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise DataFileError(path, f"{START_TIME} is not a date/time: {raw!r}") from exc
    now = datetime.now(start.tzinfo)
    if start > now + timedelta(days=1):  # a day of slack for a file written in another zone
        raise DataFileError(path, f"{START_TIME} = {raw.strip()!r} lies in the future; fix "
                                  "the file's start time, or give one_time.ages_s")
    if frame_time.size != 1 or not (frame_time[0] > 0 and np.isfinite(frame_time[0])):
        raise DataFileError(path, f"{FRAME_TIME} must be one finite time > 0 (seconds), got "
                                  f"{frame_time.tolist()}")
    frame_time = float(frame_time[0])
    problem = frame_time_problem(FRAME_TIME, frame_time)
    if problem:
        raise DataFileError(path, problem)
    check_axes(path, delays * frame_time, q)
    check_weights(path, delays * frame_time, q, g2, err)
    return OneTimeData(path, delays * frame_time, q, phi, g2, err, frame_time, start)


def _refuse_external_link(path, h5, name: str) -> None:
    """A name that leads (itself or through a parent group) to another file is refused, as
    the two-time reader does: its values would be read from that file without a word. One
    whose file cannot be opened is named as such, not as damage to this (good) file."""
    dangling = dangling_soft_link(h5, name)
    if dangling:
        raise DataFileError(path, dangling)
    link = external_link(h5, name)
    if link is None:
        return
    try:
        h5[name]
    except (KeyError, OSError):
        raise DataFileError(path, f"{name} is an external link to {link.filename}, which "
                                  "cannot be opened (missing or unreadable): copy the data "
                                  "into the file, or put that file where the link points"
                            ) from None
    raise DataFileError(path, f"{name} is an external link to {link.filename}; external "
                              "links are not read: copy the data into the file")


def _numeric(h5, name: str, path: str, max_size: int) -> np.ndarray:
    """A numeric dataset of at most ``max_size`` values as float64, or a DataFileError
    naming what it is instead (checked before anything is read)."""
    obj = h5[name]
    if isinstance(obj, h5py.Dataset) and declared_bytes(obj) > 8 * max_size:
        raise DataFileError(path, f"{name} declares {declared_bytes(obj):,} bytes, more than "
                                  f"{max_size:,} number(s) need")
    if not isinstance(obj, h5py.Dataset) or obj.dtype.kind not in "fiub":
        kind = "a group" if not isinstance(obj, h5py.Dataset) else f"of type {obj.dtype}"
        raise DataFileError(path, f"{name} is {kind}, not numbers")
    if not_real_numbers(obj, name):
        raise DataFileError(path, not_real_numbers(obj, name))
    if obj.size > max_size:
        raise DataFileError(path, f"{name} holds {obj.size} values, at most {max_size} expected")
    refuse_unread_storage(path, h5, name, obj)
    if never_written(obj):
        raise DataFileError(path, f"{name} is incomplete: part of it was never written (HDF5 "
                                  "would read its fill value there as data); the writer "
                                  "stopped early - export the file again")
    try:
        return np.asarray(obj[()], dtype=np.float64)
    except OSError as exc:  # a good file compressed with a filter this HDF5 lacks is named
        raise DataFileError(path, unreadable(obj, name, exc, "damaged file?")) from None


def check_axes(path, tau, q) -> None:
    """Delays (s) and q values a fit can use: at least two finite delays > 0, q finite > 0."""
    if tau.size < 2 or not np.all(np.isfinite(tau)) or np.any(tau <= 0):
        raise DataFileError(path, "tau must hold at least two finite delays > 0 (seconds)")
    if not np.all(np.isfinite(q)) or np.any(q <= 0):
        raise DataFileError(path, f"q values must be finite and > 0, got {q.tolist()}")


MAX_WEIGHTED = 1e100  # |g2|/sigma and 1/sigma above this overflow a fit's sums of squares


def check_weights(path, tau, q, g2, err) -> None:
    """Refuse a usable point (finite g2, finite sigma > 0) whose max(1, |g2|)/sigma
    exceeds MAX_WEIGHTED, naming its delay and q: the fit's float64 sums would overflow
    (was the engine's ValueError, a traceback, from a g2 of 1e200 or a sigma of 1e-300)."""
    with np.errstate(all="ignore"):
        ok = np.isfinite(g2) & np.isfinite(err) & (err > 0)
        w = np.where(ok, np.maximum(1.0, np.abs(g2)) / np.where(ok, err, 1.0), 0.0)
    if not np.any(w > MAX_WEIGHTED):
        return
    k, i = np.unravel_index(int(np.argmax(w)), w.shape)
    raise DataFileError(path, f"g2 = {g2[k, i]:.3g} with sigma = {err[k, i]:.3g} at tau = "
                              f"{tau[k]:.3g} s, q = {q[i]:.5g}: max(1, |g2|)/sigma = "
                              f"{w[k, i]:.3g} is beyond {MAX_WEIGHTED:g} (the fit's sums of "
                              "squares would overflow); the file is damaged - set that point's "
                              "sigma to NaN or inf to leave it out")


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
