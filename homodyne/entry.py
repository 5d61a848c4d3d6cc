"""The ``homodyne`` console script: SIGINT, SIGTERM and SIGHUP are handled from its first line.

Importing the command line and what it needs (argparse, YAML, NumPy, JAX) takes a
noticeable time; an interrupt then must end the program as one during a fit does: one
line, exit 130/143/129, no traceback. Until the CLI takes the signals over nothing has been
written, so stopping at once loses nothing. The handlers are set when this module is
imported, which the console script (and ``python -m homodyne``) does first: the package's
``__init__`` imports it then, before anything else. Python's own start-up and the console
script's first lines (before the package's first line can run) are the only moments left
uncovered.
"""

import os
import signal

from homodyne.earlystop import set_stop_at_once

set_stop_at_once()  # first (already done by the package's first line for the command)

import warnings  # noqa: E402

from homodyne.stopsignals import STOP_SIGNALS, cancel_pending_timers  # noqa: E402

# JAX probes for a TPU on its first use and warns from a timer thread when the probe takes
# over 60 s ("Did you run your code on all TPU hosts?"). homodyne never asks for a TPU, and
# a stop signal during the probe (the CLI re-sends it until it lands outside native code)
# can stretch it that long: the warning then followed the one-line interrupt message.
warnings.filterwarnings("ignore", message="TPU backend initialization is taking more than",
                        category=UserWarning)


def escaped(text: str, encoding: str | None) -> str:
    """``text`` with what ``encoding`` cannot hold written as backslash escapes."""
    encoding = encoding or "ascii"
    return text.encode(encoding, "backslashreplace").decode(encoding)


class StdoutGuard:
    """Standard output whose failure (a full disk behind ``> log.txt``, a reader that went
    away: ``| head``) costs one warning, never the exit status: the summary is printed
    after the results are committed, and a traceback there told a pipeline the fit failed.
    Text its encoding cannot hold (a non-ASCII path under an ASCII stdout) is escaped."""

    def __init__(self, stream):
        self._stream = stream
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            try:
                try:
                    return self._stream.write(text)
                except UnicodeEncodeError:  # a path or unit (1/Å) this stream's encoding
                    # lacks (PYTHONIOENCODING=ascii): escaped as stderr does, not a traceback
                    return self._stream.write(escaped(text, self._stream.encoding))
            except OSError as exc:
                self._fail(exc)
        return len(text)

    def flush(self) -> None:
        if not self.failed:
            try:
                self._stream.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = True
        try:  # what is still buffered goes nowhere, also when Python flushes it at exit
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, self._stream.fileno())
            os.close(fd)
        except (OSError, ValueError):
            pass
        os.write(2, (f"homodyne: warning: standard output cannot be written "
                     f"({exc.strerror or exc}); the rest of it is dropped\n").encode())

    def __getattr__(self, name):
        return getattr(self._stream, name)


def main() -> int:
    """The CLI's main, imported only now that an interrupt is handled. Once it has returned
    its status (results committed, or nothing written) the signals are ignored: one that
    lands while Python and JAX shut down (a tenth of a second or more) turned a complete
    run's exit status into 130/143/129. Timers still pending then are cancelled: Python
    would wait for them before exiting."""
    import sys

    from homodyne.cli import main as cli_main

    sys.stdout = StdoutGuard(sys.stdout)
    status = cli_main()
    for s, _ in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    cancel_pending_timers()  # a timer JAX left behind held the exit for 60 s
    return status
