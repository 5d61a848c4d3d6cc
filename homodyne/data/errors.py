"""Errors for data files: always name the file and what is wrong with it."""

import codecs
import errno
import os
import sys


class DataFileError(ValueError):
    """A data file is missing, unreadable, or not laid out as expected."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class QBinError(DataFileError):
    """No q bin of the file lies within the tolerance of the q asked for; the message names
    where that q came from (``q_key``: the config key, or the option that overrode it)."""

    def __init__(self, path, q: float, tolerance: float, nearest: float, bins: str,
                 q_key: str = "experimental_data.q"):
        self.q, self.tolerance, self.nearest, self.bins, self.q_key = \
            q, tolerance, nearest, bins, q_key
        fix = (f"give {q_key} one of the bins" if q_key.startswith("-") else
               f"set {q_key} to one of the bins")
        super().__init__(path, f"no q bin within {tolerance:.3g} of q = {q:.6g} (nearest "
                               f"{nearest:.6g}; bins: {bins}); {fix} or widen "
                               "experimental_data.q_tolerance")

    def named(self, q_key: str) -> "QBinError":
        """The same error for a q that came from ``q_key`` (e.g. the option ``--q``)."""
        return QBinError(self.path, self.q, self.tolerance, self.nearest, self.bins, q_key)


def data_path(path) -> str:
    """``path`` as a string (bytes and path-likes too); an empty one is an error."""
    try:
        text = os.fsdecode(os.fspath(path))
    except TypeError:
        raise DataFileError(repr(path), "is not a file path (expected str or os.PathLike)") \
            from None
    if not text:
        raise DataFileError("''", "no data file given (the path is empty)")
    return text


def unnameable_reason(path: str, *, as_text: bool = True) -> str | None:
    """Why ``path`` cannot be given to the file system, or (``as_text``: a data file the
    results name) written in the results as text: characters this process's file-name
    encoding cannot hold (a non-ASCII name under LC_ALL=C with Python's UTF-8 mode off:
    the file seems not to exist), or a name that came in as bytes that are not text in it
    (kept as surrogates); None when it can."""
    encoding = sys.getfilesystemencoding()
    try:
        os.fsencode(path)
        if as_text:
            path.encode("utf-8")
        return None
    except UnicodeEncodeError:
        pass
    if codecs.lookup(encoding).name != "utf-8":
        return (f"cannot be used as a path in this locale: Python's file names are "
                f"{encoding} here (LC_ALL/LC_CTYPE/LANG = {_locale_setting()!r}, UTF-8 mode "
                "off), which cannot hold this name; set PYTHONUTF8=1 or a UTF-8 locale (e.g. "
                "LC_ALL=C.UTF-8)")
    return "is a name that is not valid UTF-8 (shown escaped); rename the file"


def _locale_setting() -> str:
    return next((os.environ[k] for k in ("LC_ALL", "LC_CTYPE", "LANG") if os.environ.get(k)),
                "")


UNREADABLE = ("is not readable by this user (permission denied); fix its permissions or "
              "run as a user who can read it")


def missing_reason(path: str) -> str:
    """Why ``path`` cannot be opened although it was named: a dangling symlink or a loop
    of symlinks is said as such, not as a missing file."""
    if os.path.islink(path):
        try:
            os.stat(path)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return "is a loop of symbolic links; point it at the data file itself"
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
    return "file does not exist"


def data_file(path) -> str:
    """``path`` as a string, refused with the reason when it names no file to read:
    nothing there (``missing_reason``), a directory, a pipe or a device."""
    text = data_path(path)
    if (why := unnameable_reason(text)) is not None:
        raise DataFileError(text, why)
    if not os.path.exists(text):
        raise DataFileError(text, missing_reason(text))
    if os.path.isdir(text):
        raise DataFileError(text, "is a directory, expected a data file")
    if not os.path.isfile(text):  # a FIFO or device would block or read forever
        raise DataFileError(text, "is not a regular file (a pipe or device), expected a "
                            "data file")
    if not os.access(text, os.R_OK):
        raise DataFileError(text, UNREADABLE)
    return text
