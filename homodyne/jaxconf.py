"""One place that configures JAX for this package: float64, and the compilation cache.

The model defaults to float64 and the engine accumulates JᵀJ in float64 even when
the model runs in float32, so x64 is switched on before any array is created.

Compiling the fit's kernels is most of the wall time of a small fit (about 2-4 s of
a 1M-point fit on two cores), so JAX's persistent compilation cache is on by default
in a per-user folder: a later process fitting data of the same shape loads the
compiled kernels instead (the same executables, so results are bit-identical). JAX
keys each entry by the program, the compile options, the JAX/jaxlib version and the
device, so a stale entry is never used; an unreadable one is recompiled. The folder
is ``$XDG_CACHE_HOME/homodyne/jax`` (``~/.cache/homodyne/jax``; a relative
``XDG_CACHE_HOME`` is ignored, as the XDG spec says), least recently used
entries are evicted beyond ``CACHE_MAX_BYTES``. ``HOMODYNE_COMPILATION_CACHE=off``
turns it off, ``HOMODYNE_COMPILATION_CACHE=/some/folder`` moves it; a folder the user
gave JAX itself (``JAX_COMPILATION_CACHE_DIR``) is left as it is.

JAX loads whatever bytes it finds under a kernel's key: an entry cut short or damaged in
place, or another kernel's entry under this key, would be warned about in every run or
crash inside JAX. Each entry is therefore written with its key and a digest
(:mod:`homodyne.jaxcache`), and one that does not match is removed and compiled anew. A
JAX without the hook this needs runs with the cache off (one warning). A folder that cannot
be written (read only, a file, a ``.lockfile`` another process keeps) is not used: one
warning instead of two per kernel (and, for the lock, 10 s of waiting at each).
"""

import logging
import os

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402

__all__ = ["CACHE_ENV", "CACHE_MAX_BYTES", "compilation_cache_dir", "jax", "jnp",
           "set_compilation_cache", "usable_cache_dir"]

CACHE_ENV = "HOMODYNE_COMPILATION_CACHE"
CACHE_MAX_BYTES = 1 << 30
LOCK_FILE = ".lockfile"  # JAX's (jax/_src/lru_cache.py)
LOCK_WAIT_S = 1.0  # JAX holds it for one entry's read or write: milliseconds
_OFF = ("0", "off", "false", "no", "none", "n", "f", "disable", "disabled")
_ON = ("", "1", "on", "true", "yes", "default", "y", "t", "enable", "enabled")


def compilation_cache_dir(environ=None) -> str | None:
    """The cache folder ``HOMODYNE_COMPILATION_CACHE`` asks for (None: off). A
    ``~user`` of no user here is refused (one warning, cache off) rather than made a
    folder named '~user' in the current one; a relative ``XDG_CACHE_HOME`` is ignored, as
    the XDG spec says (it made ./relative/cache/homodyne/jax wherever a run started)."""
    env = os.environ if environ is None else environ
    value = env.get(CACHE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value.lower() not in _ON:
        path = os.path.expanduser(value)
        if path.startswith("~"):
            _cache_unused(value, f"{path.split(os.sep)[0]} is the home of no user here",
                          f"set {CACHE_ENV} to an absolute folder, or to 'off'")
            return None
        return path
    xdg = env.get("XDG_CACHE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "homodyne", "jax")


def usable_cache_dir(path: str) -> str | None:
    """``path``, created if needed; None (one warning) when JAX could neither lock nor
    write it there. A lock held for more than LOCK_WAIT_S counts as unusable: JAX would
    wait 10 s for it at every kernel read and write (a suspended or hung process holds it)."""
    import filelock

    try:
        os.makedirs(path, exist_ok=True)
        os.close(os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o666))
        with filelock.FileLock(os.path.join(path, LOCK_FILE), timeout=LOCK_WAIT_S):
            pass
    except (OSError, filelock.Timeout) as exc:
        why = (f"its {LOCK_FILE} is held by another process" if isinstance(exc, filelock.Timeout)
               else exc.strerror or str(exc))
        _cache_unused(path, why, f"set {CACHE_ENV} to a writable folder, or to 'off'")
        return None
    return path


def _cache_unused(path: str, why: str, fix: str) -> None:
    logging.getLogger(__name__).warning(
        "homodyne: the compilation cache %s cannot be used (%s); kernels are compiled "
        "in every run: %s", path, why, fix)


def set_compilation_cache(path: str | None) -> None:
    """Use ``path`` as JAX's persistent compilation cache (None: no persistent cache), its
    entries checked (homodyne.jaxcache). Every compiled kernel is stored (the small ones
    too: reading one is cheaper than compiling it)."""
    from homodyne import jaxcache

    if path is not None:
        path = usable_cache_dir(path)
    if path is not None and not jaxcache.install(path):
        _cache_unused(path, f"JAX {jax.__version__} has no hook for checked entries",
                      f"use the JAX version homodyne pins, or set {CACHE_ENV} to 'off'")
        path = None
    if path is not None:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_compilation_cache_max_size", CACHE_MAX_BYTES)
    jax.config.update("jax_compilation_cache_dir", path)


if jax.config.jax_compilation_cache_dir is None:  # the user's own JAX setting wins
    set_compilation_cache(compilation_cache_dir())
