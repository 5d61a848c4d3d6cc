"""The ``homodyne`` console script: SIGINT and SIGTERM are handled from its first line.

Importing the command line and what it needs (argparse, YAML, NumPy, JAX) takes a
noticeable time; an interrupt then must end the program as one during a fit does: one
line, exit 130/143, no traceback. Until the CLI takes the signals over nothing has been
written, so stopping at once loses nothing. The handlers are set when this module is
imported, which the console script does first; nothing else imports it. Python's own
start-up (before this line can run) is the only moment left uncovered.
"""

import os
import signal

INTERRUPTED = "homodyne: interrupted ({}); results already in the output folder are untouched"


def stop_at_once(signum, frame) -> None:
    """Before the CLI runs: the message and the exit status (128 + signal), nothing else."""
    what = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    os.write(2, (INTERRUPTED.format(what) + "\n").encode())  # never Python's buffered stderr
    os._exit(128 + signum)


stop_at_once.homodyne_replaceable = True  # the CLI installs its own handlers over it

for _signal, _default in ((signal.SIGINT, signal.default_int_handler),
                          (signal.SIGTERM, signal.SIG_DFL)):
    if signal.getsignal(_signal) is _default:  # an ignored signal (nohup, &) stays ignored
        signal.signal(_signal, stop_at_once)


def main() -> int:
    """The CLI's main, imported only now that an interrupt is handled. Once it has returned
    its status (results committed, or nothing written) the signals are ignored: one that
    lands while Python and JAX shut down (a tenth of a second or more) turned a complete
    run's exit status into 130/143."""
    from homodyne.cli import main as cli_main

    status = cli_main()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)
    return status
