"""Checkpoints of a running fit: HDF5 files ``homodyne_state_batch_NNNN.h5``.

Plain datasets and attributes only (no pickle). Each file carries a SHA-256 checksum
of its contents and is written atomically (temporary file, fsync, rename), so a crash
or a full disk mid-write never leaves a file that loads as valid. A corrupt latest
checkpoint is reported and the previous valid one is used. A directory is locked by
the run using it, so two runs never interleave their checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path

import h5py
import numpy as np

from homodyne import __version__
from homodyne.optimization.exceptions import NLSQCheckpointError
from homodyne.optimization.settings import DEFAULT_MIN_INTERVAL_S, CheckpointSettings
from homodyne.output import DirectoryLock, LockHeld, atomic_path

log = logging.getLogger("homodyne.checkpoint")
PATTERN = re.compile(r"^homodyne_state_batch_(\d+)\.h5$")
SAVE_TARGET_S = 2.0
_DEFAULTS = CheckpointSettings()


def _versions() -> dict:
    import jax

    return {"homodyne_version": __version__, "jax_version": jax.__version__,
            "numpy_version": np.__version__, "h5py_version": h5py.__version__}


def _write(group: h5py.Group, state: dict, compress: bool, entries: list) -> None:
    """Write ``state`` into ``group``; append (path, attrs, array) to ``entries`` for the
    checksum, so it is computed from memory instead of reading the file back."""
    attrs: dict = {}
    for key, value in state.items():
        path = f"{group.name.rstrip('/')}/{key}"
        if isinstance(value, dict):
            _write(group.create_group(key), value, compress, entries)
        elif isinstance(value, list | tuple) and value and isinstance(value[0], dict):
            attrs[key] = json.dumps(value)
        elif isinstance(value, str | bool | int | float | np.integer | np.floating) or \
                value is None:
            attrs[key] = "__none__" if value is None else value
        else:
            arr = np.asarray(value)
            if arr.dtype == object:
                raise TypeError(f"checkpoint field {key!r} is not plain numeric data")
            kw = dict(compression="gzip", compression_opts=1) if compress and arr.size > 256 \
                else {}
            group.create_dataset(key, data=arr, **kw)
            entries.append((path, {}, arr))
    group.attrs.update(attrs)
    entries.append((group.name, attrs, None))


def _read(group: h5py.Group) -> dict:
    out: dict = {}
    for key, value in group.attrs.items():
        if key == "checksum":
            continue
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value == "__none__":
            value = None
        elif isinstance(value, str) and value.startswith("[{"):
            value = json.loads(value)
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    for key, item in group.items():
        out[key] = _read(item) if isinstance(item, h5py.Group) else item[()]
    return out


def _digest(entries) -> str:
    """SHA-256 over every object's path, attributes and array (dtype, shape, bytes), in
    path order; the same bytes whether computed from memory or from the file."""
    digest = hashlib.sha256()
    merged: dict = {}
    for path, attrs, arr in entries:
        a, old = merged.get(path, ({}, None))
        merged[path] = ({**a, **attrs}, arr if arr is not None else old)
    for path in sorted(merged):
        attrs, arr = merged[path]
        digest.update(path.encode())
        for k in sorted(attrs):
            if k == "checksum":
                continue
            v = np.asarray(attrs[k])
            digest.update(f"{k}{v.dtype.str}{v.shape}".encode())
            digest.update(v.tobytes())
        if arr is not None:
            arr = np.ascontiguousarray(arr)
            digest.update(f"{arr.dtype.str}{arr.shape}".encode())
            digest.update(arr.tobytes())
    return digest.hexdigest()


def _checksum(h5: h5py.File) -> str:
    """The checksum of a file as stored (what ``_digest`` gave when it was written)."""
    entries = [("/", dict(h5.attrs), None)]

    def visit(name, obj):
        path = "/" + name
        if isinstance(obj, h5py.Dataset):
            entries.append((path, dict(obj.attrs), obj[()]))
        else:
            entries.append((path, dict(obj.attrs), None))

    h5.visititems(visit)
    return _digest(entries)


class CheckpointManager:
    """Saves, finds, validates, loads and prunes checkpoints in one directory."""

    def __init__(self, checkpoint_dir=_DEFAULTS.checkpoint_dir,
                 checkpoint_frequency: int = _DEFAULTS.checkpoint_frequency,
                 keep_last_n: int = _DEFAULTS.keep_last_checkpoints,
                 enable_compression: bool = _DEFAULTS.enable_compression,
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S):
        """``min_interval_s``: a fit saves every ``checkpoint_frequency`` batches but at
        most once per this many seconds (0: exactly every ``checkpoint_frequency``);
        a save costs a few ms of CPU, a 65k-point batch a few ms of compute."""
        if checkpoint_frequency < 1:
            raise ValueError(f"checkpoint_frequency must be >= 1, got {checkpoint_frequency}")
        if not min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.min_interval_s = float(min_interval_s)
        if keep_last_n < 1:
            raise ValueError(f"keep_last_n must be >= 1, got {keep_last_n}")
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_frequency = int(checkpoint_frequency)
        self.keep_last_n = int(keep_last_n)
        self.enable_compression = enable_compression
        self.save_times: list[float] = []
        self._lock = DirectoryLock(self.checkpoint_dir / ".lock")

    # --- locking --------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Take this directory for the current run; a second run is refused."""
        try:
            self._lock.acquire()
        except LockHeld as held:
            holder = held.holder or "another process"
            raise NLSQCheckpointError(
                f"checkpoint directory {self.checkpoint_dir} is in use by {holder}; wait for "
                "that run to finish or set optimization.streaming.checkpoint_dir to another "
                "folder") from None

    def release_lock(self) -> None:
        self._lock.release()

    # --- files ----------------------------------------------------------------------
    def path_for(self, batch_idx: int) -> Path:
        return self.checkpoint_dir / f"homodyne_state_batch_{int(batch_idx):04d}.h5"

    def list_checkpoints(self) -> list[Path]:
        """All checkpoint files, oldest first (by batch index)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir()
                 if (m := PATTERN.match(p.name))]
        return [p for _, p in sorted(found)]

    def save_checkpoint(self, batch_idx: int, state: dict, *, fingerprint: str = "") -> Path:
        """Write ``state`` (nested dict of arrays/scalars) atomically; returns the path."""
        t0 = time.perf_counter()
        path = self.path_for(batch_idx)
        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as h5:
                entries: list = []
                _write(h5, state, self.enable_compression, entries)
                top = dict(batch_idx=int(batch_idx), timestamp=time.time(),
                           fingerprint=fingerprint, **_versions())
                h5.attrs.update(top)
                entries.append(("/", top, None))
                h5.attrs["checksum"] = _digest(entries)
        elapsed = time.perf_counter() - t0
        self.save_times.append(elapsed)
        if elapsed > SAVE_TARGET_S:
            log.warning("Checkpoint save took %.1fs (target: < %.0fs)", elapsed, SAVE_TARGET_S)
        return path

    def validate_checkpoint(self, path) -> bool:
        """True when the file opens, has a checksum, and the checksum matches."""
        try:
            with h5py.File(path, "r") as h5:
                stored = h5.attrs.get("checksum")
                if stored is None:
                    return False
                if isinstance(stored, bytes):
                    stored = stored.decode()
                return stored == _checksum(h5)
        except Exception:  # noqa: BLE001 - any failure to read means "not valid"
            return False

    def load_checkpoint(self, path) -> dict:
        """The stored state as a dict (with at least ``batch_idx``); refuses corrupt files."""
        if not self.validate_checkpoint(path):
            raise NLSQCheckpointError(f"checkpoint {path} is corrupt or incomplete "
                                      "(checksum mismatch or unreadable)")
        with h5py.File(path, "r") as h5:
            return _read(h5)

    def find_latest_checkpoint(self) -> Path | None:
        files = self.list_checkpoints()
        return files[-1] if files else None

    def find_latest_valid_checkpoint(self) -> Path | None:
        """Newest checkpoint that validates; corrupt newer ones are reported and skipped."""
        for path in reversed(self.list_checkpoints()):
            if self.validate_checkpoint(path):
                return path
            log.warning("checkpoint %s is corrupt (checksum mismatch or unreadable); "
                        "falling back to the previous one", path)
        return None

    def cleanup_old_checkpoints(self) -> list[Path]:
        """Delete all but the newest ``keep_last_n`` checkpoints; returns what was deleted."""
        files = self.list_checkpoints()
        doomed = files[: max(0, len(files) - self.keep_last_n)]
        for p in doomed:
            p.unlink(missing_ok=True)
        for stale in self.checkpoint_dir.glob(".homodyne_state_batch_*.tmp"):
            stale.unlink(missing_ok=True)
        return doomed
