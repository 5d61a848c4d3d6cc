"""Process memory: glibc heap tuning (arenas, trimming) and resident-set measurements.

Used by the streamed data sources (constant memory), the pass runner (trim after a
streamed pass, room to grow a batch), the driver (peak RSS in the result) and the
benchmarks (RSS sampled during a fit). Imports nothing from homodyne.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time

import numpy as np
import psutil


@functools.cache
def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def limit_heap_arenas(n: int = 2) -> None:
    """Cap glibc's malloc arenas: the reader thread's freed buffers then stay reusable
    instead of growing a per-thread heap (constant memory when streaming)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-8, n)  # M_ARENA_MAX


def trim_heap() -> None:
    """Give freed heap pages back to the OS (after a streamed pass)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def memory_allows(points: int) -> bool:
    """True when a batch run of ``points`` points leaves most of the free memory free."""
    return points * 8 * 64 < 0.25 * psutil.virtual_memory().available


def rss_bytes() -> int:
    """This process's resident memory now."""
    return psutil.Process().memory_info().rss


def peak_rss_mb() -> float | None:
    """This process's own resident high-water mark (VmHWM). Not ru_maxrss: Linux carries
    that across fork+exec, so a child would report its parent's peak."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return rss_bytes() / 2**20


class RSSSampler:
    """Samples this process's RSS every ``interval`` seconds; ``peak_mb`` after stop."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.samples: list[float] = []
        self.marks: list[float] = []
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self._proc.memory_info().rss / 2**20)
            time.sleep(self.interval)

    def mark(self) -> None:
        """Record the RSS now (e.g. after each batch) for the batch-to-batch spread."""
        self.marks.append(self._proc.memory_info().rss / 2**20)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(self._proc.memory_info().rss / 2**20)

    @property
    def peak_mb(self) -> float:
        return max(self.samples) if self.samples else float("nan")

    @property
    def batch_cv(self) -> float:
        """Coefficient of variation of RSS across batches (after the first tenth)."""
        m = np.asarray(self.marks[len(self.marks) // 10 :])
        return float(m.std() / m.mean()) if m.size > 1 else float("nan")
