"""One-time g2 inputs: APS multi-tau HDF5 results or a plain table (CSV or NPZ).

Table layout: the first column is tau in seconds, then one g2 column and one sigma
column per q. In a CSV the header names them, with q in each name, e.g.
``tau,g2(q=0.0054),sigma(q=0.0054),g2(q=0.0071),sigma(q=0.0071)``. An NPZ holds the
arrays ``tau`` (n), ``q`` (m), ``g2`` and ``sigma`` (n x m).
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile

import numpy as np

from homodyne.data.errors import DataFileError, data_file
from homodyne.data.multitau import G2, OneTimeData, check_axes, check_weights, read_multitau
from homodyne.data.npyfile import ZIP_ERRORS, npz_headers

TABLE_SUFFIXES = (".csv", ".npz")
TABLE_KEYS = ("tau", "q", "g2", "sigma")
MAX_TABLE_BYTES = 1 << 28  # one NPZ array: 256 MiB, far above any g2 table (1e4 delays x 1e3 q)
MAX_CSV_BYTES = 1 << 30  # a CSV table is read whole: the same values as text, with room
MAX_HEADER_CHARS = 1 << 20
# what a binary file named .csv is, from its first bytes
_NOT_CSV = {b"\x89HDF\r\n\x1a\n": "an HDF5 file named .csv; rename it to .h5",
            b"PK\x03\x04": "a zip (NPZ) file named .csv; rename it to .npz",
            b"\x93NUMPY": "a .npy array named .csv"}
_Q_IN_NAME = re.compile(r"q\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def is_one_time_file(path) -> bool:
    """True for a CSV/NPZ table or an HDF5 file holding a multi-tau g2 result."""
    path = os.fspath(path)
    if path.lower().endswith(TABLE_SUFFIXES):
        return True
    try:
        import h5py

        with h5py.File(path, "r") as h5:
            return G2 in h5
    except (OSError, RuntimeError, ValueError):
        return False


def read_one_time(path) -> OneTimeData:
    """A multi-tau HDF5 result or a CSV/NPZ table, as ``OneTimeData`` (g2[tau, q])."""
    path = data_file(path)
    low = path.lower()
    if low.endswith(".csv"):
        tau, q, g2, err = _read_csv(path)
    elif low.endswith(".npz"):
        tau, q, g2, err = _read_npz(path)
    else:
        return read_multitau(path)
    return _checked(path, tau, q, g2, err)


def _read_csv(path):
    size = os.path.getsize(path)
    if size > MAX_CSV_BYTES:
        raise DataFileError(path, f"holds {size:,} bytes, more than the {MAX_CSV_BYTES:,} a g2 "
                                  "table may have; is it the right file?")
    with open(path, "rb") as fh:
        start = fh.read(8)
    for magic, what in _NOT_CSV.items():
        if start.startswith(magic):
            raise DataFileError(path, f"is {what}")
    with open(path, encoding="utf-8", errors="replace") as fh:
        header = fh.readline(MAX_HEADER_CHARS).strip().lstrip("#").split(",")
    names = [h.strip().strip("\"'").strip() for h in header]  # quoted names too
    if len(names) < 3 or (len(names) - 1) % 2:
        raise DataFileError(path, f"header has {len(names)} columns; expected tau, then a g2 "
                                  "and a sigma column per q, e.g. tau,g2(q=0.005),sigma(q=0.005)")
    q = []
    for name, err_name in zip(names[1::2], names[2::2], strict=True):
        found = _Q_IN_NAME.search(name)
        if not found:
            raise DataFileError(path, f"column {name!r} names no q value; write it as "
                                      "g2(q=<value in 1/Å>)")
        q.append(float(found.group(1)))
        # the columns are read by position: a sigma column first would be fitted as g2
        err_q = _Q_IN_NAME.search(err_name)
        if not name.lower().startswith("g2") or not err_name.lower().startswith("sigma") \
                or (err_q is not None and float(err_q.group(1)) != q[-1]):
            raise DataFileError(path, f"columns {name!r}, {err_name!r}: expected a g2 column "
                                      "then the sigma column of the same q, e.g. "
                                      "tau,g2(q=0.005),sigma(q=0.005)")
    if len(set(q)) < len(q):  # one q twice: two fits reported under one q
        raise DataFileError(path, f"the header names a q value twice ({q}); give each q once")
    try:
        with warnings.catch_warnings():  # numpy's "input contained no data": said below
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as exc:
        raise DataFileError(path, f"not a numeric table below the header: {exc}") from None
    if table.size == 0:
        raise DataFileError(path, "holds a header but no rows of numbers below it")
    if table.shape[1] != len(names):
        raise DataFileError(path, f"{table.shape[1]} columns of numbers for {len(names)} names")
    return table[:, 0], np.array(q), table[:, 1::2], table[:, 2::2]


def _read_npz(path):
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataFileError(path, f"not a readable NPZ file: {exc}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise DataFileError(path, "a single .npy array, not an NPZ table (tau, q, g2, sigma)")
    with z:
        missing = [k for k in TABLE_KEYS if k not in z.files]
        if missing:
            raise DataFileError(path, f"missing arrays {missing}; an NPZ table needs tau, q, "
                                      "g2 and sigma")
        npz_headers(path, TABLE_KEYS, max_bytes=MAX_TABLE_BYTES)  # before any data are read
        arrays = {}
        for k in TABLE_KEYS:
            try:
                a = z[k]
            except ZIP_ERRORS as exc:
                raise DataFileError(path, f"array {k!r} is unreadable: {exc}") from None
            if a.dtype.kind not in "fiu":
                raise DataFileError(path, f"array {k!r} holds {a.dtype} values, not real "
                                          "numbers")
            arrays[k] = np.asarray(a, float)
    return (arrays["tau"].ravel(), arrays["q"].ravel(), np.atleast_2d(arrays["g2"]),
            np.atleast_2d(arrays["sigma"]))


def _checked(path, tau, q, g2, err) -> OneTimeData:
    if g2.shape != err.shape or g2.shape != (tau.size, q.size):
        raise DataFileError(path, f"g2 {g2.shape}, sigma {err.shape}, {tau.size} delays and "
                                  f"{q.size} q values do not fit together")
    check_axes(path, tau, q)
    if np.unique(q).size < q.size:  # a table's q twice: two fits reported under one q
        raise DataFileError(path, f"the table names a q value twice ({q.tolist()}); give "
                                  "each q once")
    check_weights(path, tau, q, g2, err)
    return OneTimeData(path, tau, q, np.zeros(1), g2, err, float("nan"), None)
