"""Resident memory sampled from inside the process (a thread polling psutil)."""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil


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
