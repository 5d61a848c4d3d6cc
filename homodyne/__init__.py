"""homodyne: exact, constant-memory least-squares fits of two-time XPCS data.

The package is layered one way: config -> data source -> model -> engine ->
result -> writers/plots. Heavy optional peers (nlsq, snakemake) are imported
lazily where they are used, so ``import homodyne`` stays light.

Public API (each name is imported on first use; the guide's module paths, e.g.
``homodyne.optimization.nlsq_wrapper.NLSQWrapper``, keep working)::

    from homodyne import NLSQWrapper, FitResult, ModelSpec, open_two_time, load_config, \\
        run_from_config
"""

import sys as _sys


def _is_the_command() -> bool:
    """Whether this process is the ``homodyne`` command: the console script (the file run
    as ``__main__``) or ``python -m homodyne``; a program that imports the package is not."""
    argv = list(getattr(_sys, "orig_argv", ()))
    if "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["homodyne"]:
        return True
    main = getattr(_sys.modules.get("__main__"), "__file__", None)
    return bool(_sys.argv) and main == _sys.argv[0] and \
        str(main).replace("\\", "/").rsplit("/", 1)[-1] in ("homodyne", "homodyne.exe")


if _is_the_command():  # its stop handlers first: a Ctrl-C from here on is one line, no traceback
    import _signal  # built in: no import work before the signals are held

    _STOPS = {_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP}
    _held = _signal.pthread_sigmask(_signal.SIG_BLOCK, _STOPS)  # pending, not lost, until
    try:  # the handlers are set (importing them took ~1 ms: a Ctrl-C there was a traceback)
        from homodyne.earlystop import set_stop_at_once

        set_stop_at_once()
    finally:  # the mask as it was (a child inherits it): a held signal is delivered now
        _signal.pthread_sigmask(_signal.SIG_SETMASK, _held)

from importlib import import_module  # noqa: E402

_PUBLIC = {
    "NLSQWrapper": "homodyne.optimization.nlsq_wrapper",
    "FitResult": "homodyne.optimization.result",
    "ModelSpec": "homodyne.model",
    "open_two_time": "homodyne.data.twotime",
    "load_config": "homodyne.config",
    "run_from_config": "homodyne.pipeline",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    """Import a public name from its module on first use (keeps ``import homodyne`` light:
    even the version is looked up only when asked for, importlib.metadata costs ~40 ms)."""
    if name == "__version__":
        globals()[name] = value = _installed_version()
        return value
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'homodyne' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("homodyne")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "0.1.0"
