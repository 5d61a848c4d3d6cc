"""Process memory: glibc heap tuning (arenas, trimming), resident-set measurements and the
free memory a fit may plan with (capped by the job's cgroup limit).

Used by the streamed data sources (constant memory), the pass runner (trim after a
streamed pass, room to grow a batch), the tier planner (free memory), the driver (peak
RSS in the result) and the benchmarks (RSS sampled during a fit). Imports nothing from
homodyne.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
from pathlib import Path

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
    return points * 8 * 64 < 0.25 * available_bytes()


def available_bytes() -> int:
    """Free memory for this process: the machine's, capped by the memory limit of its
    control group (a Slurm job's --mem, a container's --memory), which psutil does not see:
    a 2 GB job on a 256 GB node must not plan a fit for 128 GB."""
    avail = psutil.virtual_memory().available
    limit = cgroup_memory_limit()
    return avail if limit is None else min(avail, limit)


def cgroup_memory_limit(root: str = "/") -> int | None:
    """The smallest memory limit (bytes) on this process's control group and its parents
    (cgroup v2 memory.max or v1 memory.limit_in_bytes), or None where there is none or it
    cannot be read; ``root`` is prepended to /proc and /sys (tests)."""
    try:
        lines = Path(root, "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2: one hierarchy
            base, name = Path(root, "sys/fs/cgroup"), "memory.max"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own
            base, name = Path(root, "sys/fs/cgroup/memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [q for q in path.strip().split("/") if q]
        for depth in range(len(parts), -1, -1):  # the group itself and every parent
            try:
                text = (base.joinpath(*parts[:depth]) / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2**60:  # "max" / v1's huge "unlimited"
                limits.append(int(text))
    return min(limits) if limits else None


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
