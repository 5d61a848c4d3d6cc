"""Entries of JAX's persistent compilation cache that say which kernel they hold.

JAX stores a compiled kernel under a hash of its program (``<key>-cache``) and loads
whatever bytes it finds there: an entry damaged in place that still decompresses, or a
valid entry of another kernel under this key, is deserialised and run (a warning in every
run, or a crash inside JAX). :class:`CheckedEntries` wraps JAX's file cache: each entry is
written with a header holding its key and a SHA-256 digest of the payload, and an entry
whose header does not match (damaged, cut short, another kernel's) is a miss: it is
removed, with one log line per process, and JAX compiles and stores the kernel anew. An
entry without the header (JAX's own format, as an older homodyne wrote it) is replaced
the same way, without a word.

The cache is plugged in through JAX's private ``jax._src.compilation_cache.get_file_cache``;
:func:`install` says whether that hook exists (a JAX without it: the caller turns the
cache off, never a crash).
"""

import contextlib
import hashlib
import logging
import os
import shutil
import struct

MAGIC = b"HOMODYNE-XLA-1\n"
_HEAD = struct.Struct("<H32s")  # key length, SHA-256 of the payload
_CACHE_SUFFIX = "-cache"  # JAX's names (jax/_src/lru_cache.py)
_ATIME_SUFFIX = "-atime"

log = logging.getLogger(__name__)


def pack_entry(key: str, payload: bytes) -> bytes:
    """``payload`` as stored under ``key``: MAGIC, key length and SHA-256, key, payload."""
    name = key.encode()
    return MAGIC + _HEAD.pack(len(name), hashlib.sha256(payload).digest()) + name + payload


def unpack_entry(key: str, stored: bytes) -> bytes | None:
    """The payload of ``stored`` if it is an intact entry of ``key``, else None."""
    name = key.encode()
    start = len(MAGIC) + _HEAD.size
    if len(stored) < start or not stored.startswith(MAGIC):
        return None
    length, digest = _HEAD.unpack_from(stored, len(MAGIC))
    if length != len(name) or stored[start: start + length] != name:
        return None
    payload = stored[start + length:]
    return payload if hashlib.sha256(payload).digest() == digest else None


def _intact(path: str, key: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return unpack_entry(key, fh.read()) is not None
    except OSError:
        return False


class CheckedEntries:
    """JAX's cache interface (``get``/``put``) over JAX's own file cache ``base``, with
    every entry checked against its key and digest (see the module docstring)."""

    def __init__(self, base):
        self._base = base
        self._path = base._path
        self._warned = False

    def get(self, key: str) -> bytes | None:
        try:
            stored = self._base.get(key)
        except TimeoutError:  # JAX's lock held too long (filelock.Timeout): a miss
            return None
        except OSError as exc:  # an entry that is a folder, unreadable, ...
            self._discard(key, exc.strerror or str(exc))
            return None
        if stored is None:
            return None
        payload = unpack_entry(key, stored)
        if payload is None and not stored.startswith(MAGIC):  # JAX's own format (an older
            self._discard(key, "no homodyne header", quiet=True)  # homodyne) or not an entry
        elif payload is None:
            self._discard(key, "damaged, cut short or another kernel's")
        return payload

    def put(self, key: str, value: bytes) -> None:
        self._base.put(key, pack_entry(key, value))

    def _discard(self, key: str, why: str, quiet: bool = False) -> None:
        """Remove the entry of ``key`` (under JAX's lock) so that the kernel compiled now
        takes its place; the first of a process is logged (unless ``quiet``: entries of the
        format before the header, replaced once after an upgrade)."""
        folder = os.fspath(self._path)
        lock = getattr(self._base, "lock", None) or contextlib.nullcontext()
        try:
            with lock:
                entry = os.path.join(folder, key + _CACHE_SUFFIX)
                if os.path.isdir(entry) and not os.path.islink(entry):
                    shutil.rmtree(entry)
                elif not _intact(entry, key):  # else another process has just replaced it
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry)
                        os.unlink(os.path.join(folder, key + _ATIME_SUFFIX))
        except Exception as exc:  # noqa: BLE001 - a miss all the same, never a crash
            why = f"{why}; not removed: {exc}"
        (log.debug if self._warned or quiet else log.warning)(
            "homodyne: compilation cache entry %s%s in %s not used (%s); the kernel is "
            "compiled and stored anew", key, _CACHE_SUFFIX, folder, why)
        self._warned = self._warned or not quiet


def install(folder: str) -> bool:
    """Make JAX read and write its file cache in ``folder`` through CheckedEntries (other
    folders, e.g. one the user gave JAX, keep JAX's own format). False when this JAX has no
    such hook."""
    try:
        from jax._src import compilation_cache
    except ImportError:
        return False
    original = getattr(compilation_cache, "get_file_cache", None)
    if original is None:
        return False
    if getattr(original, "homodyne_folder", None) is not None:  # installed already
        original = original.homodyne_original

    def get_file_cache(path):
        made = original(path)
        if made is None or os.path.abspath(os.fspath(path)) != os.path.abspath(folder):
            return made
        cache, where = made
        inner = getattr(cache, "_base_cache", None)  # VerificationCache(LRUCache)
        if inner is not None:
            cache._base_cache = CheckedEntries(inner)
            return cache, where
        return CheckedEntries(cache), where

    get_file_cache.homodyne_folder = folder  # type: ignore[attr-defined]
    get_file_cache.homodyne_original = original  # type: ignore[attr-defined]
    compilation_cache.get_file_cache = get_file_cache
    return True
