"""Writers for fit results: JSON parameters, HDF5 model/residuals, all written atomically.

A file is written to a temporary name in the same folder, flushed to disk and renamed,
so a crash or a full disk never leaves a partial file under the final name. Existing
results are never silently overwritten.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import h5py
import numpy as np

RESULT_FILES = ("parameters.json", "fit.h5")


class OutputExistsError(FileExistsError):
    """The output folder already holds results and overwriting was not asked for."""


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success fsync it and rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is what it wrote there (e.g. its pid)."""

    def __init__(self, holder: str | None):
        super().__init__(holder or "another process")
        self.holder = holder


class DirectoryLock:
    """An exclusive lock file (``flock``) held while one run uses a folder; the holder's
    pid is written into it so a second run can say who has it. Released on exit or
    when the process dies."""

    def __init__(self, path):
        self.path = Path(path)
        self._fh: TextIO | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``LockHeld`` at once (never waits)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or None
            fh.close()
            raise LockHeld(holder) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.generic):
        return _jsonable(v.item())
    if isinstance(v, float) and not math.isfinite(v):
        return None  # standard JSON has no NaN/Infinity; undetermined values are listed
    return v


def write_json(path, payload: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return Path(path)


def check_output_dir(directory, overwrite: bool) -> Path:
    """Create the output folder; refuse if it already holds results (unless overwrite)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise OutputExistsError(f"output path {d} exists and is not a directory")
    existing = [f for f in RESULT_FILES if (d / f).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{d} already holds results ({', '.join(existing)}); choose another --output-dir "
            "or pass --overwrite (output.overwrite: true) to replace them")
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_fit_h5(path, *, phi_deg, frames, data, model, attrs: dict) -> Path:
    """Per-angle data, model and residual matrices (possibly decimated) with metadata."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5["phi_deg"] = np.asarray(phi_deg, float)
        h5["frames"] = np.asarray(frames)
        opts = dict(compression="gzip", compression_opts=4, shuffle=True)
        h5.create_dataset("data", data=np.asarray(data, np.float32), **opts)
        h5.create_dataset("model", data=np.asarray(model, np.float32), **opts)
        h5.create_dataset("residuals", data=np.asarray(data - model, np.float32), **opts)
        for k, v in attrs.items():
            h5.attrs[k] = v if not isinstance(v, dict | list) else json.dumps(_jsonable(v))
    return Path(path)
