"""Checkpoints of a running fit: HDF5 files ``homodyne_state_batch_NNNN.h5``.

Plain datasets and attributes only (no pickle). Each file ends with a trailer (magic,
the fit's fingerprint, SHA-256 of every byte before the digest), checked from the raw
bytes before HDF5 parses anything, so a damaged file can never reach the HDF5 library.
Only then are the expected fields read, each shape and size checked against what the
file declares before a byte of data is read. Files are written atomically (temporary
file, fsync, rename). A corrupt latest checkpoint is reported and the previous valid
one is used. Pruning and resuming only touch this fit's files (by fingerprint), so
checkpoints of other fits in the same folder are not used or pruned; a run holding the
folder's lock replaces one only where it saves the same batch (no live run can need it).
A directory is locked by the run using it, so two runs never interleave their checkpoints.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from homodyne import __version__
from homodyne.optimization.exceptions import NLSQCheckpointError
from homodyne.optimization.settings import DEFAULT_MIN_INTERVAL_S, CheckpointSettings, is_whole
from homodyne.output import DirectoryLock, LockHeld, OutputDirError, atomic_path

log = logging.getLogger("homodyne.checkpoint")
PATTERN = re.compile(r"^homodyne_state_batch_(\d+)\.h5$")
SAVE_TARGET_S = 2.0
_DEFAULTS = CheckpointSettings()
TRAILER_MAGIC = b"HOMODYNE-CKPT-1\n"  # 16 bytes
FINGERPRINT_BYTES = 64
TRAILER_BYTES = len(TRAILER_MAGIC) + FINGERPRINT_BYTES + 32
MAX_STATE_BYTES = 1 << 28  # declared size of all fields together, checked before reading
# what a checkpoint can be: its fields (at most MAX_STATE_BYTES, compression only shrinks
# them) plus HDF5's metadata and the trailer; a larger file (e.g. a 1 GB sparse file named
# like one) is refused from its size before a byte of it is hashed
MAX_CHECKPOINT_BYTES = MAX_STATE_BYTES + (16 << 20)
MAX_PARAMS = 4096
MAX_DEPTH = 2


def _versions() -> dict:
    import jax

    return {"homodyne_version": __version__, "jax_version": jax.__version__,
            "numpy_version": np.__version__, "h5py_version": h5py.__version__}


def _write(group: h5py.Group, state: dict, compress: bool) -> None:
    """Write ``state`` into ``group`` (nested dicts as groups, scalars as attributes)."""
    attrs: dict = {}
    for key, value in state.items():
        if isinstance(value, dict):
            _write(group.create_group(key), value, compress)
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
    group.attrs.update(attrs)


def _read(group: h5py.Group) -> dict:
    out: dict = {}
    for key, value in group.attrs.items():
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


class _Refused(Exception):
    """A checkpoint failed a check; the message says which."""


def _append_trailer(path, fingerprint: str) -> None:
    """Seal a written file: magic, fingerprint, SHA-256 of all bytes before the digest."""
    fp = fingerprint.encode("ascii", "replace")[:FINGERPRINT_BYTES].ljust(FINGERPRINT_BYTES)
    with open(path, "rb+") as fh:
        fh.seek(0, os.SEEK_END)
        fh.write(TRAILER_MAGIC + fp)
        fh.flush()
        fh.seek(0)
        digest = _hash_prefix(fh, os.fstat(fh.fileno()).st_size)
        fh.seek(0, os.SEEK_END)
        fh.write(digest)


def _hash_prefix(fh, n: int) -> bytes:
    h = hashlib.sha256()
    left = n
    while left > 0:
        chunk = fh.read(min(left, 1 << 20))
        if not chunk:
            raise _Refused("shorter than it says")
        h.update(chunk)
        left -= len(chunk)
    return h.digest()


def _tail(fh) -> tuple[int, bytes]:
    size = os.fstat(fh.fileno()).st_size
    if not TRAILER_BYTES < size <= MAX_CHECKPOINT_BYTES:
        raise _Refused(f"size {size} bytes is not that of a checkpoint")
    fh.seek(size - TRAILER_BYTES)
    tail = fh.read(TRAILER_BYTES)
    if not tail.startswith(TRAILER_MAGIC):
        raise _Refused("no homodyne trailer (incomplete or not a checkpoint)")
    return size, tail


def _open_regular(path):
    """``path`` opened for reading if it is a regular file: a FIFO (or a link to one) named
    like a checkpoint would block open() for ever, a device would never end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _Refused("not a regular file (a pipe, device or folder)")
    return os.fdopen(fd, "rb")


def _owner(path) -> str | None:
    """The fingerprint in a file's trailer (its last bytes only), None if unreadable."""
    try:
        with _open_regular(path) as fh:
            tail = _tail(fh)[1]
    except (OSError, _Refused):
        return None
    return tail[len(TRAILER_MAGIC):-32].rstrip(b" ").decode("ascii", "replace")


def _verify_bytes(path) -> None:
    """Refuse a file whose bytes are not exactly those written (before any parsing)."""
    with _open_regular(path) as fh:
        size, tail = _tail(fh)
        fh.seek(0)
        if _hash_prefix(fh, size - 32) != tail[-32:]:
            raise _Refused("digest mismatch (the file changed after it was written)")


def _declared_bytes(obj) -> int:
    """What reading a dataset or attribute would allocate, from its header alone."""
    shape, dtype = obj.shape, obj.dtype
    if h5py.check_string_dtype(dtype) is not None:  # text: stored as written, uncompressed,
        return int(np.prod(shape or (), dtype=np.float64)) * 16  # so bounded by the file
    if dtype.kind not in "biufS" or dtype.hasobject or dtype.names is not None:
        raise _Refused(f"field of unsupported type {dtype}")
    return int(np.prod(shape or (), dtype=np.float64)) * dtype.itemsize


def _refuse_outside_storage(key: str, ds) -> None:
    """A field must keep its values in this file, as save_checkpoint writes them: a virtual
    dataset or external raw storage reads other files (a pipe blocks for ever, a virtual
    dataset mapping itself crashes HDF5), decided from the header before a value is read."""
    plist = ds.id.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL or plist.get_external_count():
        raise _Refused(f"{key} keeps its values outside the file (virtual or external "
                       "storage), which save_checkpoint never writes")


# the kind of number each field is written as (a field of another kind or width, e.g. an H of
# float32 from another writer, would resume to other parameters than the run that wrote it)
# (the lists of excluded batches are checked by the fit: check_fit_state)
_INTEGER_FIELDS = ("pass_stage", "pass_n", "pass_batches", "pass_failed", "partial_points")


def _expected_dtype(key: str, dtype) -> bool:
    if key in _INTEGER_FIELDS or key in ("partial/n", "partial/n_band"):
        return dtype == np.int64
    if key.startswith("pass_") or key.startswith("partial/") or \
            key in ("parameters", "current_x", "start"):
        return dtype == np.float64
    return True


def _expected_shape(key: str, n: int, p: int) -> tuple | None:
    """The shape a field of the fit state must have (None: any small shape)."""
    table = {"pass_stage": (n,), "pass_cost": (n,), "pass_n": (n,), "pass_seconds": (n,),
             "pass_batches": (n,), "pass_x": (n, p), "pass_g": (n, p), "pass_H": (n, p, p),
             "parameters": (p,), "current_x": (p,), "start": (p,), "partial/H": (p, p),
             "partial/g": (p,), "partial/cost": (), "partial/n": ()}
    return table.get(key)


def _read_checked(h5: h5py.File) -> dict:
    """Read the expected fields only after checking every declared shape and size."""
    n = h5.attrs.get("n_passes", 0)
    if not isinstance(n, int | np.integer) or not 0 <= n <= 1_000_000:
        raise _Refused(f"n_passes = {n!r}")
    shapes = {}
    budget = [0]

    def survey(group, prefix, depth):
        if depth > MAX_DEPTH:
            raise _Refused(f"groups nested deeper than {MAX_DEPTH}")
        for name in group.attrs:
            budget[0] += _declared_bytes(group.attrs.get_id(name))
        for key in group:
            link = group.get(key, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise _Refused(f"{prefix}{key} is a link")
            item = group[key]
            if isinstance(item, h5py.Group):
                survey(item, f"{prefix}{key}/", depth + 1)
            elif isinstance(item, h5py.Dataset):
                _refuse_outside_storage(f"{prefix}{key}", item)
                budget[0] += _declared_bytes(item)
                shapes[f"{prefix}{key}"] = item.shape
                if not _expected_dtype(f"{prefix}{key}", item.dtype):
                    raise _Refused(f"{prefix}{key} is stored as {item.dtype}, not as written")
            else:
                raise _Refused(f"{prefix}{key} is neither a group nor a dataset")
            if budget[0] > MAX_STATE_BYTES:
                raise _Refused(f"declares more than {MAX_STATE_BYTES} bytes of data")

    survey(h5, "", 0)
    x_shape = shapes.get("current_x", shapes.get("parameters"))
    p = x_shape[0] if x_shape and len(x_shape) == 1 else None
    if x_shape is not None and (p is None or not 0 < p <= MAX_PARAMS):
        raise _Refused(f"parameter vector of shape {x_shape}")
    for key, shape in shapes.items():
        want = _expected_shape(key, int(n), p) if p is not None else None
        if want is not None and tuple(shape) != want:
            raise _Refused(f"{key} has shape {tuple(shape)}, expected {want}")
    state = _read(h5)
    _check_values(state)
    return state


def _check_values(state: dict) -> None:
    """Counters are non-negative integers, vectors finite, stages known."""
    for key in ("batch_idx", "n_passes", "next_batch", "iteration", "batches_failed"):
        v = state.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _Refused(f"{key} = {v!r} is not a non-negative integer")
    for key in ("parameters", "current_x", "start", "pass_x", "pass_H", "pass_g",
                "pass_seconds"):
        if key in state and not np.all(np.isfinite(state[key])):
            raise _Refused(f"{key} is not finite")
    if "pass_cost" in state and np.any(np.isnan(state["pass_cost"]) |
                                       (state["pass_cost"] < 0)):
        raise _Refused("pass_cost holds NaN or a negative cost")  # +inf: a failed trial
    for key in ("pass_n", "pass_batches"):
        if key in state and np.any(np.asarray(state[key]) < 0):
            raise _Refused(f"{key} holds negative counts")
    if "pass_stage" in state and np.any((state["pass_stage"] < 0) | (state["pass_stage"] > 1)):
        raise _Refused("pass_stage holds an unknown stage")
    for key, v in (state.get("partial") or {}).items():
        if not np.all(np.isfinite(v)):
            raise _Refused(f"partial/{key} is not finite")
    if not isinstance(state.get("fingerprint", ""), str):
        raise _Refused("fingerprint is not text")


def _checked_dir(checkpoint_dir) -> Path:
    """The checkpoint folder as a Path; an empty name, a NUL or an existing non-folder is
    refused here, not at the first save of a long fit."""
    try:
        name = os.fspath(checkpoint_dir)
    except TypeError:  # None or a number: was "expected str, bytes or os.PathLike object"
        raise ValueError(f"checkpoint_dir must be a folder name (a str or path), got "
                         f"{checkpoint_dir!r}") from None
    if not str(name).strip():
        raise ValueError("checkpoint_dir is empty; give the folder for the checkpoints "
                         "(e.g. './checkpoints')")
    if "\0" in str(name):
        raise ValueError(f"checkpoint_dir {name!r} contains a NUL character; give a valid "
                         "folder name")
    path = Path(name)
    if path.exists() and not path.is_dir():
        raise ValueError(f"checkpoint_dir {path} is a file, not a folder; give a folder for "
                         "the checkpoints")
    return path


class CheckpointDirError(NLSQCheckpointError, OutputDirError):
    """The checkpoint folder cannot be taken for this run (another live run holds it, or
    its file system cannot lock): a folder to change, as for the output folder (the
    command line's exit 2), not a failed fit."""


def take_checkpoint_lock(lock: DirectoryLock, folder: Path) -> None:
    """Take ``lock`` (the folder's .lock) or raise CheckpointDirError naming the folder,
    the run that holds it and the fix."""
    try:
        lock.acquire()
    except OutputDirError as exc:
        raise CheckpointDirError(str(exc)) from None
    except LockHeld as held:
        raise CheckpointDirError(
            f"checkpoint folder {folder} is in use by {held.holder or 'another run'}; wait "
            "for it to finish or set optimization.streaming.checkpoint_dir to another "
            "folder") from None


def hold_checkpoint_dir(folder) -> DirectoryLock:
    """The lock of ``folder``, taken for a whole run before it reads any data
    (CheckpointDirError when another live run holds it). The run's fit uses it
    (``CheckpointManager(lock=...)``) and the caller releases it at the end, so no other
    run can take the folder between this check and the fit."""
    folder = Path(folder)
    lock = DirectoryLock(folder / ".lock")
    take_checkpoint_lock(lock, folder)
    return lock


class CheckpointManager:
    """Saves, finds, validates, loads and prunes checkpoints in one directory."""

    def __init__(self, checkpoint_dir=_DEFAULTS.checkpoint_dir,
                 checkpoint_frequency: int = _DEFAULTS.checkpoint_frequency,
                 keep_last_n: int = _DEFAULTS.keep_last_checkpoints,
                 enable_compression: bool = _DEFAULTS.enable_compression,
                 min_interval_s: float = DEFAULT_MIN_INTERVAL_S,
                 lock: DirectoryLock | None = None):
        """``min_interval_s``: a fit saves every ``checkpoint_frequency`` batches but at
        most once per this many seconds (0: every ``checkpoint_frequency``; at the first
        call boundary, a run of <= 8 batches, at or after the batch where a save is due);
        a save costs a few ms of CPU, a 65k-point batch a few ms of compute. ``lock``:
        the folder's lock as its caller holds it (hold_checkpoint_dir), used and left to
        that caller to release, instead of one taken and released by this manager."""
        # whole numbers, as checkpoint_config's keys (2.5 was taken as 2 without a word)
        if not is_whole(checkpoint_frequency) or checkpoint_frequency < 1:
            raise ValueError(f"checkpoint_frequency must be a whole number >= 1, got "
                             f"{checkpoint_frequency!r}")
        if not min_interval_s >= 0:
            raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
        self.min_interval_s = float(min_interval_s)
        if not is_whole(keep_last_n) or keep_last_n < 1:
            raise ValueError(f"keep_last_n must be a whole number >= 1, got {keep_last_n!r}")
        self.checkpoint_dir = _checked_dir(checkpoint_dir)
        self.checkpoint_frequency = int(checkpoint_frequency)
        self.keep_last_n = int(keep_last_n)
        self.enable_compression = enable_compression
        self.save_times: list[float] = []
        if lock is not None and Path(lock.path) != self.checkpoint_dir / ".lock":
            raise ValueError(f"lock {lock.path} is not the lock of the checkpoint folder "
                             f"{self.checkpoint_dir}; pass hold_checkpoint_dir(checkpoint_dir)")
        self._lock = lock or DirectoryLock(self.checkpoint_dir / ".lock")
        self._lock_given = lock is not None  # its caller releases it
        self._locked = False  # this run holds the folder (acquire_lock), until release_lock
        # the fit these checkpoints belong to: resume and pruning only see its files
        self.fingerprint: str | None = None
        self._reported_others: set[Path] = set()  # other fits' files, warned about once
        self._undeletable: set[Path] = set()  # files this user may not delete, said once
        # this fit's files the last find_latest_valid_checkpoint refused (newest first)
        self.refused: list[Path] = []
        # what a user of the manager needs of a state beyond these generic checks (a fit:
        # every field it reads); raises ValueError naming what is wrong
        self.state_check: Callable[[dict], None] | None = None

    # --- locking --------------------------------------------------------------------
    def acquire_lock(self) -> None:
        """Take this directory for the current run; a second run is refused
        (CheckpointDirError: a setting to change, not a failed fit)."""
        if not (self._lock_given and self._lock.held and not self._lock.lost()):
            self._lock.release()  # (a given lock whose file is gone: taken again)
            take_checkpoint_lock(self._lock, self.checkpoint_dir)
        self._locked = True

    def release_lock(self) -> None:
        self._locked = False
        if not self._lock_given:
            self._lock.release()

    def _holds_folder(self) -> bool:
        """This run holds the folder's lock now (taken, not released, not lost)."""
        return self._locked and self._lock.held and not self._lock.lost()

    def _relock_if_lost(self) -> None:
        """The folder (or its .lock) removed or replaced during the run took the lock
        with it, and a save re-creates the folder: the lock is taken again there first, so
        a second run of this fit cannot take it; held by another run by then, the save is
        refused (CheckpointDirError) and nothing is written into that run's folder."""
        if not self._locked or (self._lock.held and not self._lock.lost()):
            return
        self._lock.release()
        try:
            take_checkpoint_lock(self._lock, self.checkpoint_dir)
        except (CheckpointDirError, OSError) as exc:  # (OSError: a file where it was)
            why = (f"a file or a broken link now stands at {self.checkpoint_dir}"
                   if os.path.lexists(self.checkpoint_dir) and not self.checkpoint_dir.is_dir()
                   else str(exc))
            raise CheckpointDirError(f"the checkpoint folder was replaced or removed during "
                                     f"this run and cannot be locked again: {why}") from None
        log.warning("checkpoint folder %s was removed or replaced during the run (its "
                    "checkpoints with it); locked again, later checkpoints go there",
                    self.checkpoint_dir)

    # --- files ----------------------------------------------------------------------
    def path_for(self, batch_idx: int) -> Path:
        return self.checkpoint_dir / f"homodyne_state_batch_{int(batch_idx):04d}.h5"

    def list_checkpoints(self) -> list[Path]:
        """All checkpoint files, oldest first (by batch index); only regular files (a
        FIFO of such a name would block the run for ever when opened)."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.checkpoint_dir.iterdir()
                 if (m := PATTERN.match(p.name)) and p.is_file()]
        return [p for _, p in sorted(found)]

    def save_checkpoint(self, batch_idx: int, state: dict, *, fingerprint: str = "") -> Path:
        """Write ``state`` (nested dict of arrays/scalars) atomically; returns the path."""
        t0 = time.perf_counter()
        self._relock_if_lost()
        path = self.path_for(batch_idx)
        if self.fingerprint is None:
            self.fingerprint = fingerprint
        owner = _owner(path) if path.exists() else None
        replaces_other = owner is not None and owner != fingerprint[:FINGERPRINT_BYTES]
        if replaces_other and not self._holds_folder():
            raise FileExistsError(errno.EEXIST, f"{path.name} belongs to another fit "
                                  "(other data or settings) and is kept; give each fit "
                                  "its own optimization.streaming.checkpoint_dir", str(path))
        # (held by this run: no live run can need that file; its fit's own rerun falls back
        # to its older checkpoints, or starts afresh)
        buffer = io.BytesIO()  # HDF5 writes to memory; a full disk is then a plain OSError
        with h5py.File(buffer, "w") as h5:  # (a half-flushed HDF5 file crashes when freed)
            _write(h5, state, self.enable_compression)
            top = dict(batch_idx=int(batch_idx), timestamp=time.time(),
                       fingerprint=fingerprint, **_versions())
            h5.attrs.update(top)
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(buffer.getbuffer())
                _append_trailer(tmp, fingerprint)
        except PermissionError as exc:
            if not os.path.lexists(path):
                raise
            # another user's file in a folder with the sticky bit (/tmp): the raw rename
            # error named a temporary file and no fix
            raise PermissionError(exc.errno, f"{path.name} in {self.checkpoint_dir} cannot be "
                                  f"replaced by this user ({exc.strerror}): it is another "
                                  "user's file in a folder with the sticky bit; its owner "
                                  "can remove it, or give this fit its own "
                                  "optimization.streaming.checkpoint_dir") from None
        if replaces_other:  # (said once it is: a save that failed had replaced nothing)
            log.warning("%s in %s belonged to another fit (other data or settings, no run "
                        "uses it now: this run holds the folder); replaced by this fit's "
                        "checkpoint", path.name, self.checkpoint_dir)
        elapsed = time.perf_counter() - t0
        self.save_times.append(elapsed)
        if elapsed > SAVE_TARGET_S:
            log.warning("Checkpoint save took %.1fs (target: < %.0fs)", elapsed, SAVE_TARGET_S)
        return path

    def check_checkpoint(self, path) -> dict:
        """The stored state, or NLSQCheckpointError saying why the file is refused: its
        bytes are verified before HDF5 sees them, then every field before it is read."""
        if not Path(path).exists():
            raise NLSQCheckpointError(f"checkpoint {path} does not exist; list the folder's "
                                      "checkpoints with find_latest_valid_checkpoint()")
        try:
            _verify_bytes(path)
            with h5py.File(path, "r") as h5:
                state = _read_checked(h5)
            if self.state_check is not None:
                self.state_check(state)
            return state
        except (_Refused, ValueError) as exc:
            reason = str(exc)
        except PermissionError as exc:  # intact for all we know: say so, not "corrupt"
            raise NLSQCheckpointError(f"checkpoint {path} cannot be read by this user "
                                      f"({exc.strerror}); fix its permissions to resume "
                                      "from it") from None
        except Exception as exc:  # noqa: BLE001 - a sealed file HDF5 cannot read: refused
            reason = f"{type(exc).__name__}: {exc}"
        raise NLSQCheckpointError(f"checkpoint {path} is corrupt or incomplete ({reason})")

    def validate_checkpoint(self, path) -> bool:
        """True when the file's bytes match its trailer and every field checks out."""
        try:
            self.check_checkpoint(path)
        except NLSQCheckpointError:
            return False
        return True

    def load_checkpoint(self, path) -> dict:
        """The stored state as a dict (with at least ``batch_idx``); refuses corrupt files."""
        return self.check_checkpoint(path)

    def find_latest_checkpoint(self) -> Path | None:
        files = self.list_checkpoints()
        return files[-1] if files else None

    def _ours(self, files: list[Path]) -> list[Path]:
        """The files of this fit (all of them while no fingerprint is set)."""
        if self.fingerprint is None:
            return files
        return [p for p in files if _owner(p) == self.fingerprint[:FINGERPRINT_BYTES]]

    def find_latest_valid_checkpoint(self) -> Path | None:
        """Newest checkpoint of this fit that validates; corrupt newer ones are reported
        and skipped, other fits' checkpoints are not used."""
        files = self.list_checkpoints()
        others = [p for p in files if p not in self._ours(files) and _owner(p) is not None]
        if set(others) - self._reported_others:
            self._reported_others.update(others)
            log.warning("%d checkpoint(s) in %s belong to another fit (other data or "
                        "settings); they are not used%s", len(others), self.checkpoint_dir,
                        ", and one on a batch this fit saves is replaced (no run uses them "
                        "now: this run holds the folder)" if self._holds_folder() else
                        " and not touched")
        candidates = [p for p in files if p not in others]
        self.refused = []
        for i, path in reversed(list(enumerate(candidates))):
            try:
                self.check_checkpoint(path)
                return path
            except NLSQCheckpointError as exc:
                self.refused.append(path)
                log.warning("%s; %s", exc, "falling back to the previous one" if i else
                            "it is the oldest checkpoint of this fit")
        return None

    def _delete(self, doomed: list[Path]) -> list[Path]:
        """Delete each of ``doomed`` that this user may delete and return those; one that
        cannot go (another user's, in a folder with the sticky bit) is said once and kept,
        and stops neither the others nor the fit (it stopped all pruning: 29 files kept
        with keep_last_checkpoints 3, and a full disk read as a permission error)."""
        deleted: list[Path] = []
        kept: dict[str, list[str]] = {}  # why it cannot go: the names
        for p in doomed:
            try:
                p.unlink(missing_ok=True)
                deleted.append(p)
            except OSError as exc:
                if p not in self._undeletable:
                    self._undeletable.add(p)
                    kept.setdefault(exc.strerror or str(exc), []).append(p.name)
        for why, names in kept.items():  # one line for all of them, not one per file
            one = len(names) == 1
            log.warning("%s in %s cannot be deleted by this user (%s); %s kept beside this "
                        "fit's newest checkpoints: %s owner can remove %s",
                        f"checkpoint {names[0]}" if one else
                        f"{len(names)} checkpoints ({', '.join(names)})",
                        self.checkpoint_dir, why, "it is" if one else "they are",
                        "its" if one else "their", "it" if one else "them")
        return deleted

    def others(self) -> list[Path]:
        """Checkpoints of other fits in the folder (their trailer names another fit)."""
        files = self.list_checkpoints()
        ours = set(self._ours(files))
        return [p for p in files if p not in ours and _owner(p) is not None]

    def remove_checkpoints(self) -> list[Path]:
        """Delete every checkpoint of this fit (other fits' files are never touched)."""
        return self._delete(self._ours(self.list_checkpoints()))

    def make_room(self) -> list[Path]:
        """Delete this fit's checkpoints other than its newest valid one (a save found no
        room on the disk): the one a rerun resumes from is never deleted; returns what was
        deleted (other fits' files are never touched)."""
        keep = self.find_latest_valid_checkpoint()
        return self._delete([p for p in self._ours(self.list_checkpoints()) if p != keep])

    def cleanup_old_checkpoints(self) -> list[Path]:
        """Delete all but the newest ``keep_last_n`` checkpoints of this fit; returns what
        was deleted (other fits' files are never touched). Outside a run that holds the
        folder, the folder's lock is taken for it: a live fit's fallbacks are not deleted
        under it (CheckpointDirError names the run that holds it)."""
        if self._holds_folder():
            return self._prune()
        self.acquire_lock()
        try:
            return self._prune()
        finally:
            self.release_lock()

    def _prune(self) -> list[Path]:
        files = self._ours(self.list_checkpoints())
        doomed = self._delete(files[: max(0, len(files) - self.keep_last_n)])
        self._delete([stale for stale in self.checkpoint_dir.glob(".homodyne_state_batch_*.tmp")
                      if stale.is_file() and not stale.is_symlink()])  # (a folder: not ours)
        return doomed
