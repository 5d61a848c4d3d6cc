"""The signals that stop a run, and how its one message names them.

Ctrl-C (SIGINT), a batch system's stop (SIGTERM) and a closed terminal or dropped ssh
link (SIGHUP) all end a run the same way: a checkpoint where checkpoints are on, the best
parameters so far, one line, exit status 128 + the signal's number (130, 143, 129).
"""

import signal

# each signal with Python's default handler for it (a different handler is a caller's own)
STOP_SIGNALS = ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL),
                (signal.SIGHUP, signal.SIG_DFL))


def fit_stop_signals() -> list[int]:
    """The signals a fit stops on: all three, but one ignored at the start stays ignored, as
    it is outside the fit: a SIGHUP under ``nohup`` (closing the terminal does not stop a
    run meant to outlive it), a SIGINT in a shell script's background job (``cmd &``: the
    Ctrl-C meant for the script). A stop then never depends on the moment it lands."""
    return [s for s, _ in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN]


def signal_name(signum: int) -> str:
    """How a stop names its signal: Ctrl-C, SIGTERM or SIGHUP."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def cancel_pending_timers() -> int:
    """Cancel the ``threading.Timer`` threads still waiting once a command has returned
    (how many): Python waits for them before it exits. JAX starts one (its 60 s "TPU
    backend initialization is taking more than..." warning) as it probes for a TPU and
    cancels it in a ``finally`` that a stop signal landing as the timer starts skips: the
    interrupted program then took 60 s to exit after its one-line message."""
    import threading  # here: the console script imports this module before its handlers are set

    pending = [t for t in threading.enumerate()
               if isinstance(t, threading.Timer) and t.is_alive()]
    for t in pending:
        t.cancel()
    return len(pending)
