"""The ``homodyne`` command's first stop handlers: a signal before the CLI takes the
signals over ends the program at once, one line, exit 128 + the signal's number.

Set by the package's first line when the process is the command (console script or
``python -m homodyne``) and again by ``homodyne.entry``: nothing has been written yet, so
stopping at once loses nothing. Only ``os``, ``signal`` and ``stopsignals``: each import
before the handlers are set widens the window in which a Ctrl-C printed a traceback.
"""

import os
import signal

from homodyne.stopsignals import STOP_SIGNALS, signal_name

INTERRUPTED = "homodyne: interrupted ({}); results already in the output folder are untouched"


def stop_at_once(signum, frame) -> None:
    """Before the CLI runs: the message and the exit status (128 + signal), nothing else."""
    what = signal_name(signum)
    os.write(2, (INTERRUPTED.format(what) + "\n").encode())  # never Python's buffered stderr
    os._exit(128 + signum)


stop_at_once.homodyne_replaceable = True  # the CLI installs its own handlers over it


def set_stop_at_once() -> None:
    """``stop_at_once`` for every stop signal still at Python's default (an ignored one,
    under nohup or ``cmd &``, stays ignored; a caller's own handler is kept)."""
    for sig, default in STOP_SIGNALS:
        if signal.getsignal(sig) is default:
            signal.signal(sig, stop_at_once)
