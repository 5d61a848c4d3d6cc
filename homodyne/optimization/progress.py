"""Progress bars for CHUNKED and STREAMING fits (tqdm), as in the guide's example output:

    Processing XPCS data: 100%|████| 200M/200M [05:23<00:00, 618k pts/s]
    Batch 15/50: 100%|████████████| 15/50 [02:15<07:15, 12.4s/batch]
    Success rate: 93.3% | Avg loss: 0.0234 | Best loss: 0.0198

Silent when disabled or when stderr is not a terminal (unless forced).
"""

from __future__ import annotations

import math
import sys

from tqdm.auto import tqdm


class ProgressReporter:
    """Three lines per pass: points with rate, batches with ETA, and a status line."""

    def __init__(self, enabled: bool = True, force: bool = False, file=None):
        self.file = file or sys.stderr
        self.enabled = enabled and (force or getattr(self.file, "isatty", lambda: False)())
        self.points = self.batches = self.status = None
        self.best = math.inf
        self.loss_sum = 0.0
        self.loss_n = 0
        self.whole_pass = True

    def new_pass(self, stage: str, index: int, n_points: int, n_batches: int,
                 start_batch: int = 0) -> None:
        """Bars for one pass; a pass resumed from a checkpoint starts at ``start_batch``."""
        if not self.enabled:
            return
        self.close()
        kw = dict(file=self.file, leave=False, dynamic_ncols=True)
        self.points = tqdm(total=n_points, desc=f"Processing XPCS data ({stage} pass {index})",
                           unit=" pts", unit_scale=True, position=0, **kw)
        self.batches = tqdm(total=n_batches, initial=start_batch, desc="Batch", unit="batch",
                            position=1, **kw)
        self.status = tqdm(total=0, bar_format="{desc}", position=2, **kw)
        self.loss_sum, self.loss_n = 0.0, 0
        self.whole_pass = start_batch == 0  # a resumed pass's mean loss covers part of it

    def update(self, points: int, batches: int, failed: int, done: int, cost: float) -> None:
        if not self.enabled or self.points is None:
            return
        self.points.update(points)
        self.batches.update(batches)
        self.loss_sum += cost
        self.loss_n += points
        avg = self.loss_sum / max(self.loss_n, 1)
        rate = (done - failed) / done if done else 1.0
        # a pass ends with its last batch: ``points`` counts the points fitted, which
        # leaves out NaN ones, so it never reached the total and Best stayed inf
        pass_done = self.batches.n >= self.batches.total
        if pass_done and self.points.n < self.points.total:
            self.points.update(self.points.total - self.points.n)
        best = min(self.best, avg) if pass_done and self.whole_pass else self.best
        self.batches.set_description(f"Batch {self.batches.n}/{self.batches.total}")
        self.status.set_description_str(
            f"Success rate: {rate:.1%} | Avg loss: {avg:.4g} | Best loss: {best:.4g}")
        self.best = best

    def close(self) -> None:
        for bar in (self.points, self.batches, self.status):
            if bar is not None:
                bar.close()
        self.points = self.batches = self.status = None
