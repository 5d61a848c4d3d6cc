"""Writers for fit results: JSON parameters, HDF5 model/residuals, all written atomically.

A file is written to a temporary name in the same folder, flushed to disk and renamed,
so a crash or a full disk never leaves a partial file under the final name. A run's
files are staged together (``ResultSet``) and committed at the end, parameters.json
last, so a folder holds one complete result set or the previous one. Existing results
are never silently overwritten. Files honour the umask and no symlink is followed.
Temporary names carry the writer's pid (with its start time) and host: the next run on
this host to lock the folder removes those a killed run left behind, also where its pid
now belongs to another process.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import math
import os
import re
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import h5py
import numpy as np

RESULT_FILES = ("parameters.json", "fit.h5")
MARKER = "parameters.json"  # committed last: its presence means the set is complete
# every file a run may write (two-time, then one-time): a new set removes the old ones
SET_FILES = ("fit.h5", "c2_heatmaps.png", "c2_cuts.png", "scaling_per_angle.png",
             "residual_histogram.png", "per_q.csv", "g2_fits.png", "rates_vs_q.png", "fit.log",
             "j_model", MARKER)
SET_FOLDERS = ("j_model",)  # entries of a set that are folders (a one-time series' J-model)
SET_LIST_KEY = "result_files"  # in the marker: the files of its set
# parameters.json (the marker) of n parameters holds two n x n matrices as text, about
# 42 bytes per n^2: 22 MB for 360 angles (723 parameters); 256 MiB holds ~2,500
MAX_MARKER_BYTES = 256 << 20  # a result larger than this is not read back
MAX_RECORD_BYTES = 16 << 20  # a small record read back (a job's job.json)
INTERRUPTED = "parameters.interrupted.json"
MULTI_Q_TABLE = "summary.csv"  # the root of a multi-q run (production/multiq.py) holds it
FAILED_LOG = "fit.incomplete.log"
log = logging.getLogger(__name__)


class OutputExistsError(FileExistsError):
    """The output folder already holds results and overwriting was not asked for."""


class OutputDirError(ValueError):
    """An output or checkpoint folder cannot be used (a file, read-only, disk full...)."""


def create_new(path, mode: int = 0o666) -> int:
    """Open a new file for writing (O_EXCL, never through a symlink; mode & ~umask)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)


def _temp_name(path: Path) -> Path:
    """The one pattern of every temporary file homodyne writes (TEMP_NAME): the writer's
    pid and host in it tell a killed run's leftovers from a running writer's files (on a
    folder shared by several hosts, NFS, only this host's are judged). The suffix is
    kept: writers such as matplotlib pick the format from it. The pid's start time, where
    the system tells it, follows the pid: a pid reused by another process after a kill no
    longer keeps the killed run's files."""
    pid = os.getpid()
    started = _start_time(pid)
    tag = f"{pid}" if started is None else f"{pid}s{started}"
    return path.with_name(f".tmp-{tag}.{_host()}-{secrets.token_hex(4)}-{path.name}")


def _start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22);
    None where there is no such process or no /proc (then the pid alone is judged)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
        return int(raw[raw.rindex(b")") + 2:].split()[19])  # (the name may hold ') ')
    except (OSError, ValueError, IndexError):
        return None


def _host() -> str:
    """This host's name as it goes into temporary names: [A-Za-z0-9_], at most 32 chars."""
    import socket

    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "_"


# pid, its start time, then the host (each absent in the names of versions before it was
# added: judged by pid, by pid and host)
TEMP_NAME = re.compile(r"\.tmp-(\d{1,9})(?:s(\d{1,20}))?(?:\.([A-Za-z0-9_]{1,32}))?"
                       r"-[0-9a-f]{8}-.")


def remove_stale_temp_files(folder, of: str | None = None,
                            folders: tuple[str, ...] = SET_FOLDERS) -> list[str]:
    """Delete the temporary files in ``folder`` whose writer on this host no longer runs
    (a run killed by SIGKILL or a power cut leaves them); called with the folder's lock
    held, or with ``of`` (a file name): only the temporary files of that file. Only regular
    files named by ``_temp_name`` are touched, and staged folders of the names ``folders``
    (the sets written there have); returns the names removed (and logs them)."""
    removed, kept = [], []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        found = TEMP_NAME.match(entry.name)
        if found is None or found.group(3) not in (None, _host()) or \
                _running(int(found.group(1)), found.group(2)) or \
                (of is not None and entry.name[found.end() - 1:] != of):
            continue  # not ours, another host's (its pids mean nothing here), or running
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
            elif entry.is_dir(follow_symlinks=False) and \
                    entry.name[found.end() - 1:] in folders:  # a staged folder
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.name)
        except FileNotFoundError:
            pass
        except OSError as exc:  # another user's, in a folder with the sticky bit (as /tmp)
            kept.append(f"{entry.name} ({exc.strerror})")
    if removed:
        log.info("removed %d temporary file(s) left in %s by a run that was killed: %s",
                 len(removed), folder, ", ".join(sorted(removed)))
    if kept:  # harmless (hidden names no run reads): left to their owner
        log.info("%d temporary file(s) left in %s by a run that was killed cannot be removed "
                 "by this user and are left to their owner: %s", len(kept), folder,
                 ", ".join(sorted(kept)))
    return removed


def _running(pid: int, started: str | None = None) -> bool:
    """Whether the process ``pid`` that started at ``started`` (None: any) runs (one of
    another user counts too); a live pid that started at another time is another process
    (the pid was reused after the writer was killed)."""
    if pid <= 0:
        return True  # not a pid we write: never ours to remove
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as someone else
        pass
    now = _start_time(pid) if started is not None else None
    return now is None or now == int(started)


def file_sha256(path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in chunks."""
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; on success fsync it and rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    os.close(create_new(tmp))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def h5_with_room(path, n_bytes: int):
    """An HDF5 file created at ``path`` (an empty file, e.g. atomic_path's) with ``n_bytes``
    reserved on disk before HDF5 writes a byte: a disk without room is an OSError at once.

    HDF5 never sees a failed write (left with a failed flush it crashes the interpreter):
    should one fail anyway (a bound too small, no fallocate on this file system), the
    error is kept, later writes are dropped, and it is raised once HDF5 has closed the file.
    """
    with open(path, "r+b", buffering=0) as raw:
        sink = _KeepWriteError(raw)
        with h5py.File(sink, "w") as h5:  # created empty: a reserved length would be read
            sink.reserve(n_bytes)  # as a file without an HDF5 signature
            yield h5
        sink.raise_kept()


class _KeepWriteError:
    """A file for h5py's fileobj driver whose writes always succeed for HDF5; the first
    OSError is kept (``raise_kept``) and every later write is dropped."""

    def __init__(self, raw):
        self.raw = raw
        self.error: OSError | None = None

    def reserve(self, n_bytes: int) -> None:
        """Allocate the first ``n_bytes`` of the file; HDF5 truncates it to its real size when
        it closes the file. File systems that cannot allocate ahead are left to the guard."""
        try:
            os.posix_fallocate(self.raw.fileno(), 0, max(1, int(n_bytes)))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise  # ENOSPC, EDQUOT, EFBIG: no room for the file

    def raise_kept(self) -> None:
        if self.error is not None:
            raise self.error

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):  # a raw write may be short
                    done += self.raw.write(view[done:])
            except OSError as exc:
                self.error = exc
        return len(view)

    def truncate(self, size=None):
        if self.error is None:
            try:
                return self.raw.truncate(size)
            except OSError as exc:
                self.error = exc
        return size

    def seek(self, offset, whence=os.SEEK_SET):
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:
        return self.raw.readinto(buffer)

    def read(self, size=-1) -> bytes:
        return self.raw.read(size)

    def flush(self) -> None:
        pass


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is what it wrote there (e.g. its pid)."""

    def __init__(self, holder: str | None):
        super().__init__(holder or "another process")
        self.holder = holder


def file_size_limit_fix() -> str:
    """The fix for a write refused with EFBIG (File too large): not free space but this
    process's file-size limit (``ulimit -f``), named with its value."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    now = "" if soft == resource.RLIM_INFINITY else f", now {soft:,} bytes"
    return f"raise the file-size limit of this shell (ulimit -f{now})"


def _lock_open_fix(code: int | None, path: Path) -> str:
    """The fix for a lock file that cannot be opened, by its cause (errno)."""
    if code == errno.ELOOP:
        return "remove it: a symbolic link is never followed"
    if code in (errno.EACCES, errno.EPERM) and _not_replaceable(path.parent, [path.name]):
        return ("it belongs to another user and the folder has the sticky bit (as /tmp): "
                "this user can neither remove it nor change its permissions; choose another "
                "folder (or have its owner remove it)")
    if code in (errno.EACCES, errno.EPERM):
        return "it, or the folder, belongs to another user or is read-only: fix the permissions"
    if code == errno.EISDIR:
        return "a folder stands at the lock file's name: remove that folder or choose another one"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space in that folder or choose another one"
    if code == errno.EROFS:
        return "the folder is on a read-only file system: choose another one"
    return "choose another folder"


class DirectoryLock:
    """An exclusive lock file (``flock``) held while one run uses a folder; the holder's
    pid is written into it so a second run can say who has it. Released on exit or
    when the process dies. Taking it removes the temporary files of killed runs (and
    their staged folders of the names ``folders``)."""

    def __init__(self, path, folders: tuple[str, ...] = SET_FOLDERS):
        self.path = Path(path)
        self.folders = folders
        self._fh: TextIO | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``LockHeld`` at once (never waits)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:  # never through a symlink planted in the folder, never blocking on a FIFO
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                         0o666)
        except OSError as exc:
            raise OutputDirError(f"cannot open the lock file {self.path} ({exc.strerror}); "
                                 f"{_lock_open_fix(exc.errno, self.path)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OutputDirError(f"the lock file {self.path} is not a regular file (a pipe or "
                                 "device); remove it")
        fh = os.fdopen(fd, "r+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                fh.close()  # (ENOLCK, EOPNOTSUPP...): no run holds it; it cannot be held
                raise OutputDirError(
                    f"cannot lock {self.path} ({exc.strerror or exc}): the file system of that "
                    "folder does not support file locks (a network mount without its lock "
                    "service?); choose a folder on a local disk") from None
            fh.seek(0)
            holder = fh.read().strip() or None
            fh.close()
            raise LockHeld(holder) from None
        try:  # a full disk fails here, after the (empty) file was created
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()}")
            fh.flush()
        except OSError as exc:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            try:
                fh.close()
            except OSError:
                pass  # close flushes the pid again into the same full disk
            raise OutputDirError(f"cannot write the lock file {self.path} ({exc.strerror or exc}); "
                                 "free space in that folder or choose another one") from None
        self._fh = fh
        remove_stale_temp_files(self.path.parent, folders=self.folders)  # no other run can
        # be writing there now

    @property
    def held(self) -> bool:
        """This process holds the lock (acquired, not released)."""
        return self._fh is not None

    def lost(self) -> bool:
        """True when this process holds the lock but its file is no longer at its path
        (the folder or the file was removed or replaced): the flock then guards nothing."""
        if self._fh is None:
            return False
        held = os.fstat(self._fh.fileno())
        try:
            now = os.lstat(self.path)
        except OSError:
            return True
        return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fh is not None:
            import fcntl

            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


class OutputLock:
    """One run per output folder: a second run pointed at it is refused, not interleaved."""

    def __init__(self, folder: Path, folders: tuple[str, ...] = SET_FOLDERS):
        self.path = Path(folder) / ".homodyne.lock"
        self._lock = DirectoryLock(self.path, folders)

    def __enter__(self):
        try:
            self._lock.acquire()
        except LockHeld as held:
            holder = held.holder or "another run"
            raise OutputExistsError(f"{self.path.parent} is in use by {holder}; wait for it to "
                                    "finish or choose another --output-dir") from None
        return self

    def __exit__(self, *exc):
        self._lock.release()


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


def data_file_fields(path) -> dict:
    """``data_file`` as given (relative to the folder the run started in) and
    ``data_file_abs``, the same file's absolute path with links resolved: a result read
    from elsewhere still names its data."""
    return {"data_file": str(path), "data_file_abs": str(Path(path).resolve())}


def write_json(path, payload: dict) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return Path(path)


def check_output_dir(directory, overwrite: bool) -> Path:
    """Create the output folder; refuse if it already holds results (unless overwrite)."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise OutputExistsError(f"output path {d} exists and is not a directory")
    refuse_folders_at_result_names(d, (*SET_FILES, INTERRUPTED, FAILED_LOG))  # before the fit
    if os.path.lexists(d / MULTI_Q_TABLE):
        raise OutputDirError(
            f"{d} holds a multi-q run ({MULTI_Q_TABLE} and a folder per file and q bin): a "
            "single fit there would mix two kinds of results; to refit one q bin run its "
            "config with --q and no --output-dir (the fit goes to its own folder <file>/q<NN> "
            "there), or choose another --output-dir")
    existing = [f for f in RESULT_FILES if (d / f).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{d} already holds results ({', '.join(existing)}); choose another --output-dir "
            "or pass --overwrite (output.overwrite: true) to replace them")
    theirs = _not_replaceable(d, SET_FILES)
    if theirs:
        raise OutputDirError(
            f"{', '.join(theirs)} in {d} belong(s) to another user and the folder has the "
            "sticky bit (as /tmp): this user cannot replace or remove them, so a new result "
            "set cannot be written there; choose another --output-dir (or have their owner "
            "remove them)")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _not_replaceable(folder: Path, names) -> list[str]:
    """The entries of ``names`` in ``folder`` this user may not replace or remove: another
    user's, in a folder with the sticky bit that this user does not own (root may). A run
    found out only when it committed, after the whole fit ('make the folder writable')."""
    euid = os.geteuid()
    try:
        st = os.stat(folder)
    except OSError:
        return []
    if euid == 0 or not st.st_mode & stat.S_ISVTX or st.st_uid == euid:
        return []
    theirs = []
    for name in names:
        try:
            if os.lstat(folder / name).st_uid != euid:
                theirs.append(name)
        except OSError:
            pass
    return theirs


def refuse_folders_at_result_names(folder: Path, names, during: bool = False,
                                   folders: tuple[str, ...] = SET_FOLDERS) -> None:
    """OutputDirError if a result file's name in ``folder`` is a folder (not a link to
    one), or a result folder's name (of ``folders``) a file: renaming one over the other
    fails, after part of a set would have been replaced."""
    for name in names:
        if name in folders:
            if os.path.lexists(folder / name) and not _real_dir(folder / name):
                raise OutputDirError(f"{folder / name} is a file or link where the result "
                                     f"folder {name} goes; move it away or choose another "
                                     "--output-dir")
            continue
        if (folder / name).is_dir() and not (folder / name).is_symlink():
            when = " (made during the run; the previous results are untouched)" if during else ""
            raise OutputDirError(f"{folder / name} is a folder where the result file {name} "
                                 f"goes{when}; move it away or choose another --output-dir")


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def check_inputs_outside_results(folder, inputs) -> None:
    """Refuse a run whose input file (the data copied into the output folder as fit.h5, the
    config kept there as fit.log) is one of the result files it would write there:
    committing the results would replace, and so destroy, it."""
    d = Path(folder)
    for name in (*SET_FILES, INTERRUPTED, FAILED_LOG):
        target = d / name
        for path in inputs:
            try:
                same = path is not None and target.exists() and os.path.samefile(path, target)
            except OSError:
                same = False
            if same:
                raise OutputDirError(f"the input file {path} is {target}, a result file this "
                                     "run writes: the results would replace it; move the file "
                                     "out of the output folder or choose another --output-dir")


def ensure_writable_dir(directory, what: str, option: str) -> Path:
    """Create ``directory`` if needed and prove a file can be created in it, or raise
    OutputDirError naming the folder, the reason and ``option`` to change."""
    from homodyne.data.errors import unnameable_reason  # (homodyne.data imports this module)

    d = Path(directory)
    if (why := unnameable_reason(str(d), as_text=False)) is not None:
        raise OutputDirError(f"{what} {d} {why}")
    try:
        for parent in (d, *d.parents):
            if parent.is_symlink():  # broken or a loop: mkdir says 'File exists'
                _refuse_unfollowable_link(parent, f"{what} {d} "
                                          f"{'is' if parent == d else 'lies below'}", option)
            if parent.exists():  # may itself fail: a name too long, a symlink loop
                if not parent.is_dir():
                    where = "is a file" if parent == d else \
                        f"lies below the regular file {parent}"
                    raise OutputDirError(f"{what} {d} {where}; choose another {option}")
                break
        d.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=d):
            pass
    except OSError as exc:
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise OutputDirError(f"{what} {d} cannot be used ({exc.strerror}); choose another "
                                 f"{option}") from None
        raise OutputDirError(f"{what} {d} is not writable ({exc.strerror or exc}); fix its "
                             f"permissions or choose another {option}") from None
    return d


def _refuse_unfollowable_link(link: Path, subject: str, option: str) -> None:
    """OutputDirError for a symbolic link whose target does not exist or that loops."""
    try:
        os.stat(link)
    except FileNotFoundError:
        raise OutputDirError(f"{subject} a symbolic link to {os.readlink(link)}, which does "
                             f"not exist (a broken link); create that folder or choose "
                             f"another {option}") from None
    except OSError as exc:
        raise OutputDirError(f"{subject} a symbolic link that cannot be followed "
                             f"({exc.strerror}); choose another {option}") from None


class ResultSet:
    """One run's result files, written under temporary names and committed together.

    ``stage(name)`` gives the temporary path to write ``name`` to; ``commit()`` renames
    them all with signals held off, removing the old marker first and writing it last,
    so the folder never shows a mix of two runs. ``discard()`` deletes the staged files.
    ``names``: every file a set of this kind may hold (a CLI run's SET_FILES, a production
    fit's own list), of which ``folders`` are folders.
    """

    def __init__(self, folder, names: tuple[str, ...] = SET_FILES,
                 folders: tuple[str, ...] = SET_FOLDERS):
        self.folder = Path(folder)
        self.names, self.folders = names, folders
        self.staged: dict[str, Path] = {}
        self.in_place = False  # the set renamed into place (a stop after that keeps it)
        self.committed: dict[str, Path] = {}  # once committed: each file's final path

    def stage(self, name: str) -> Path:
        tmp = _temp_name(self.folder / name)
        self.staged[name] = tmp
        return tmp

    def commit(self) -> dict[str, Path]:
        previous = previous_set_files(self.folder, self.names)
        if MARKER in self.staged:  # the marker lists its set: the next run removes only those
            marker = self.staged[MARKER]
            payload = json.loads(marker.read_text())
            payload[SET_LIST_KEY] = sorted(self.staged)
            marker.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
        for tmp in self.staged.values():
            for inner in sorted(tmp.iterdir()) if _real_dir(tmp) else ():
                _fsync(inner)
            _fsync(tmp)
        refuse_folders_at_result_names(self.folder, sorted({*previous, *self.staged, INTERRUPTED,
                                                            FAILED_LOG}), True, self.folders)
        stops: list[int] = []
        handlers = _hold_stops(stops)
        old_folders = []  # the previous set's folders, renamed aside, removed at the end
        try:
            _unlink(self.folder / MARKER)
            for name in previous:
                if name not in self.staged:
                    _unlink(self.folder / name, self.folders)  # the old set's, not this set's
            for name, tmp in sorted(self.staged.items(), key=lambda kv: kv[0] == MARKER):
                if name in self.folders and _real_dir(self.folder / name):
                    aside = _temp_name(self.folder / name)  # a folder is not renamed over one
                    os.replace(self.folder / name, aside)
                    old_folders.append(aside)
                os.replace(tmp, self.folder / name)
            self.in_place = True
            try:  # the set is in place (its marker last): what follows cannot undo it
                for aside in old_folders:
                    shutil.rmtree(aside)
                _unlink(self.folder / INTERRUPTED)
                _unlink(self.folder / FAILED_LOG)
                _fsync(self.folder, os.O_DIRECTORY)
            except OSError as exc:
                log.warning("results written to %s, but %s (%s)", self.folder,
                            "an older run's file there was not removed", exc)
        finally:
            try:
                held = _release_stops(handlers, stops)
            except KeyboardInterrupt as exc:  # a stop taken by another thread lands as the
                # handlers come back: after the renames it is a stop after the commit
                if self.in_place:
                    self.staged = {}
                    raise StoppedAfterCommit(self.folder) from exc
                raise
        files, self.staged = {n: self.folder / n for n in self.staged}, {}
        self.committed = files
        if held is not None:  # a stop that came while the set was renamed into place
            try:
                signal.raise_signal(held)
            except KeyboardInterrupt as exc:
                raise StoppedAfterCommit(self.folder) from exc
        return files

    def discard(self, keep_log: bool = True) -> None:
        """Delete the staged files; the log is kept as fit.incomplete.log (fit.log stays the
        log of the results that remain)."""
        for name, tmp in self.staged.items():
            try:  # best effort: the folder may have become read-only, gone or a file (the
                # next run to lock it removes what is left); the run's own error is reported
                if keep_log and name == "fit.log" and tmp.exists():
                    os.replace(tmp, self.folder / FAILED_LOG)
                else:
                    _unlink(tmp)
            except OSError as exc:
                log.debug("could not remove the unfinished file %s (%s)", tmp,
                          exc.strerror or exc)
        self.staged = {}


@contextmanager
def committed_set(folder, names: tuple[str, ...], folders: tuple[str, ...] = ()):
    """A whole result set written all-or-nothing into ``folder`` (a production fit's): the
    folder locked against a second run, each file written to ``stage(name)`` of the
    ResultSet yielded, all committed as the block ends (parameters.json last); an error or
    a stop before that deletes what was staged and leaves the previous set untouched."""
    out = ensure_writable_dir(folder, "output folder", "output folder")
    with OutputLock(out, folders):
        results = ResultSet(out, names, folders)
        try:
            yield results
            results.commit()
        finally:
            if not results.in_place:
                results.discard(keep_log=False)


class StoppedAfterCommit(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) that came while a result set was renamed into place: it
    is acted on once the set is complete, and the folder holds the new set, not the old."""

    def __init__(self, folder: Path):
        super().__init__(str(folder))
        self.folder = folder


_STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _hold_stops(stops: list[int]) -> dict:
    """Stop signals wait while a set is renamed into place. Blocking them in this thread is
    not enough: another thread (JAX's) receives them and Python runs the handler in the
    main thread anyway, so in the main thread the handlers record them instead (into
    ``stops``). Returns what ``_release_stops`` puts back."""
    held = {"mask": signal.pthread_sigmask(signal.SIG_BLOCK, set(_STOPS))}
    if threading.current_thread() is threading.main_thread():
        for s in _STOPS:  # (elsewhere handlers run in the main thread, never in this one)
            previous = signal.getsignal(s)
            if previous is not None:  # (None: a handler not installed from Python, kept)
                held[s] = previous
                signal.signal(s, lambda signum, frame: stops.append(signum))
    return held


def _release_stops(held: dict, stops: list[int]) -> int | None:
    """Put the handlers back; the first stop that came meanwhile, to be raised again."""
    for s in _STOPS:
        if s in held:
            signal.signal(s, held[s])
    signal.pthread_sigmask(signal.SIG_SETMASK, held["mask"])
    return next((s for s in stops if held.get(s) not in (signal.SIG_IGN, None)), None)


def read_json_file(path, max_bytes: int = MAX_MARKER_BYTES, *, follow: bool = True):
    """The JSON in a small file we read back (a result, a job record, a marker): a regular
    file only (a FIFO would block for ever, a device never end), at most ``max_bytes`` (a
    link to a huge file is not read whole), UTF-8, integers a float can hold (float() of a
    400-digit one raises OverflowError in the reader). OSError, ValueError (also
    UnicodeDecodeError) or RecursionError say why not."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a pipe, device or folder)",
                          str(path))
        raw = fh.read(max_bytes + 1) if st.st_size <= max_bytes else b""
    if len(raw) > max_bytes or st.st_size > max_bytes:
        raise OSError(errno.EFBIG, f"larger than the {max_bytes:,} bytes such a file has",
                      str(path))
    return json.loads(raw.decode("utf-8"), parse_int=_json_int)


def _json_int(text: str) -> int:
    value = int(text)
    if abs(value) > sys.float_info.max:
        raise ValueError(f"an integer of {len(text.lstrip('-'))} digits, beyond any number "
                         "a result holds")
    return value


def previous_set_files(folder: Path, names: tuple[str, ...] = SET_FILES) -> tuple[str, ...]:
    """The files of the result set now in ``folder`` (a later set replaces exactly these):
    those its marker lists; every name of ``names`` (the files a set of its kind may hold)
    for a set whose marker lists none (an older version's, or an unreadable marker beside
    fit.h5); none in a folder without a set, whose files of our names were not written by
    us and are left alone."""
    if not any((folder / name).exists() for name in RESULT_FILES):
        return ()
    try:  # bounded, never through a link, never blocking on a FIFO
        listed = read_json_file(folder / MARKER, MAX_MARKER_BYTES, follow=False)[SET_LIST_KEY]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):  # edited: nested deep
        listed = None
    if isinstance(listed, list) and all(isinstance(n, str) and n in names for n in listed):
        return tuple(listed)
    return names


def _unlink(path: Path, folders: tuple[str, ...] = SET_FOLDERS) -> None:
    """Remove a file (or a result folder of ``folders``, with what is in it)."""
    try:
        if path.name in folders and _real_dir(path) or \
                (path.name.startswith(".tmp-") and _real_dir(path)):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync(path: Path, flags: int = os.O_NOFOLLOW) -> None:
    """Flush a file (or, with O_DIRECTORY, a folder's entries) to disk."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _compact(values: np.ndarray) -> np.ndarray:
    """float32 to keep the file small, float64 where a value does not fit float32
    (casting it would overflow to inf with a numpy warning on the console)."""
    finite = np.abs(values[np.isfinite(values)])
    if finite.size and float(finite.max()) > _FLOAT32_MAX:
        return values
    return values.astype(np.float32)


def write_fit_h5(path, *, phi_deg, frames, data, model, attrs: dict) -> Path:
    """Per-angle data, model and residual matrices (possibly decimated) with metadata.

    HDF5 builds the file in memory (it is small: decimated) and plain Python writes the
    bytes, so a full disk is an OSError, never an HDF5 file half-flushed that crashes
    the interpreter when it is freed."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5["phi_deg"] = np.asarray(phi_deg, float)
        h5["frames"] = np.asarray(frames)
        opts = dict(compression="gzip", compression_opts=4, shuffle=True)
        data, model = np.asarray(data, float), np.asarray(model, float)
        with np.errstate(over="ignore", invalid="ignore"):
            residuals = data - model
        for name, values in (("data", data), ("model", model), ("residuals", residuals)):
            h5.create_dataset(name, data=_compact(values), **opts)
        for k, v in attrs.items():
            h5.attrs[k] = v if not isinstance(v, dict | list) else json.dumps(_jsonable(v))
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)
